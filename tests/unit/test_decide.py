"""The agent's decisions, every cell: status × requested × run state × generations × restarts ×
fence × deadline × uptime. No combination raises, and every status a step records is a move
`TRANSITIONS[AGENT]` allows — so no decision can end in a refused write retried for ever."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ucloud_common.config import Settings, load_settings
from ucloud_common.specs import Specs
from ucloud_common.states import Requested, Status, Writer, check_transition
from ucloud_common.vm import VM, VNCEndpoint, placed_on
from ucloud_vm.decide import NO_UNDERLAY, Act, Seen, Step, decide
from ucloud_vm.driver import LIVE, Observation, RunState

NOW = datetime(2027, 1, 1, tzinfo=UTC)
AGENT_FIELDS = {"observed_generation", "error", "restarts", "started_at", "deadline", "nic_errors", "guacamole"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    conf: Path = tmp_path_factory.mktemp("conf") / "empty.conf"
    conf.write_text("")
    return load_settings(conf, max_restarts=3)


def base() -> VM:
    return VM(uuid="u1", owner="alice", name="web", specs=Specs(cpu=1, ram=1, ssd=1), image="tiny",
              storage="rbd", **placed_on("h1"))


def cells(settings: Settings):  # type: ignore[no-untyped-def]
    vm = base()
    for status, requested, state, new_request, reboot, restarts, fenced, deadline, started in itertools.product(
            Status, Requested, RunState, (False, True), (False, True), (0, settings.max_restarts), (False, True),
            (None, NOW - timedelta(seconds=1), NOW + timedelta(seconds=30)),
            (None, NOW - timedelta(seconds=5), NOW - timedelta(seconds=settings.stable_after + 1))):
        generation = 7
        cell = vm.model_copy(update={
            "status": status, "requested": requested, "generation": generation,
            "observed_generation": generation - 1 if new_request else generation,
            "reboot_generation": generation if reboot else 0, "restarts": restarts,
            "deadline": deadline, "started_at": started})
        yield cell, Seen(Observation(state, "last words"), fenced)


def test_every_cell_decides_a_step_the_state_table_allows(settings: Settings) -> None:
    count = 0
    for vm, seen in cells(settings):
        count += 1
        where = f"{vm.status} requested {vm.requested}, process {seen.run.state}"
        step = decide(vm, seen, NOW, settings)
        assert isinstance(step, Step), where
        if step.status is not None:
            check_transition(Writer.AGENT, vm.status, step.status)  # raises IllegalTransition
        assert set(step.fields) <= AGENT_FIELDS, where
        assert step.look_again is None or step.look_again >= 0, where
        if step.act is Act.START:
            assert seen.run.state is RunState.ABSENT, f"{where}: a second process started"
            assert vm.requested in (Requested.RUNNING, Requested.SUSPENDED), where
        if vm.requested is Requested.DELETED and vm.status is not Status.REQUESTED_NEW:
            assert step.act is Act.DELETE or step.look_again, f"{where}: a deletion forgotten"
        if step.act is Act.NOTHING and not step.writes():
            assert step.event == "", f"{where}: an event for nothing done"
        if (vm.status is Status.STOPPING and vm.requested is not Requested.DELETED and vm.deadline is not None
                and NOW >= vm.deadline and seen.run.state not in (RunState.ABSENT, RunState.SHUTDOWN)):
            assert step.act is Act.KILL, f"{where}: a shutdown past its deadline not stopped hard"
        if step.act is Act.RESET:
            assert not step.writes() and step.confirm, f"{where}: a reboot marked done before it happened"
    assert count > 50_000


def test_the_error_cell_with_a_live_process_converges_to_running(settings: Settings) -> None:
    """The cell that used to write RUNNING over ERROR (refused, retried every 5 s for ever): a start
    that succeeded although its first answer failed. The process is adopted through STARTING."""
    vm = base().model_copy(update={"status": Status.ERROR, "error": "QMP query-status failed"})
    seen = Seen(Observation(RunState.RUNNING))
    first = decide(vm, seen, NOW, settings)
    assert (first.act, first.status, first.event) == (Act.NOTHING, Status.STARTING, "re-adopted its QEMU")
    vm = vm.model_copy(update={"status": first.status, **first.fields})
    second = decide(vm, seen, NOW, settings)
    assert second.status is Status.RUNNING and second.fields["error"] == ""


def walk(vm: VM, state: RunState, settings: Settings, limit: int = 8) -> tuple[VM, RunState, list[str]]:
    """Apply decisions as the agent would, with the simplest hypervisor: what an act does is done."""
    now = NOW
    taken = []
    for _ in range(limit):
        step = decide(vm, Seen(Observation(state)), now, settings)
        taken.append(step.sentence())
        vm = vm.model_copy(update={"status": step.status or vm.status, **step.fields})
        state = {Act.START: RunState.PAUSED if vm.requested is Requested.SUSPENDED else RunState.RUNNING,
                 Act.PAUSE: RunState.PAUSED, Act.RESUME: RunState.RUNNING, Act.RESET: RunState.RUNNING,
                 Act.POWERDOWN: RunState.SHUTDOWN, Act.KILL: RunState.ABSENT}.get(step.act, state)
        if step.act is Act.NOTHING and not step.writes():
            if not step.look_again:
                return vm, state, taken
            now += timedelta(seconds=step.look_again)
    return vm, state, taken


@pytest.mark.parametrize("requested, status, state", [
    (Requested.RUNNING, Status.RUNNING, RunState.RUNNING),
    (Requested.SUSPENDED, Status.SUSPENDED, RunState.PAUSED),
    (Requested.STOPPED, Status.STOPPED, RunState.ABSENT),
])
def test_a_new_request_converges_from_every_status_and_run_state(
        settings: Settings, requested: Requested, status: Status, state: RunState) -> None:
    for start_status, start_state in itertools.product(set(Status) - {Status.REQUESTED_NEW, Status.DELETING},
                                                       (RunState.ABSENT, *LIVE, RunState.SHUTDOWN)):
        vm = base().model_copy(update={"status": start_status, "requested": requested, "generation": 2,
                                       "observed_generation": 1})
        end, end_state, taken = walk(vm, start_state, settings)
        if (start_state is RunState.SHUTDOWN and requested is not Requested.STOPPED
                and start_status not in (Status.STOPPING, Status.STOPPED)):
            # The guest powered itself off: the VM is STOPPED, until its owner starts it again
            # (a stop it was asked, or a stopped VM asked to start, is the request honoured).
            assert (end.status, end_state) == (Status.STOPPED, RunState.ABSENT), taken
            continue
        assert (end.status, end_state) == (status, state), f"from {start_status}/{start_state}: {taken}"
        assert end.observed_generation == 2, taken


def test_a_crash_is_killed_then_restarted_after_a_backoff_then_given_up(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.RUNNING, "started_at": NOW - timedelta(seconds=5)})
    step = decide(vm, Seen(Observation(RunState.ABSENT, "qemu: terminated by signal 9")), NOW, settings)
    assert step.event == "killed: QEMU exited unexpectedly: qemu: terminated by signal 9"
    assert step.look_again == 1.0 and step.fields["restarts"] == 0
    vm = vm.model_copy(update={"status": Status.KILLED, **step.fields})
    assert decide(vm, Seen(Observation(RunState.ABSENT)), NOW, settings).sentence() == "waiting before restarting it"
    later = NOW + timedelta(seconds=1)
    restart = decide(vm, Seen(Observation(RunState.ABSENT)), later, settings)
    assert (restart.act, restart.fields["restarts"], restart.event) == (Act.START, 1, "restarted")
    given_up = vm.model_copy(update={"restarts": settings.max_restarts})
    assert decide(given_up, Seen(Observation(RunState.ABSENT)), later, settings).status is Status.ERROR


def test_a_crash_after_a_stable_run_starts_a_new_count(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.RUNNING, "restarts": 2,
                                   "started_at": NOW - timedelta(seconds=settings.stable_after)})
    assert decide(vm, Seen(Observation(RunState.ABSENT)), NOW, settings).fields["restarts"] == 0


def test_a_shutdown_presses_the_button_and_comes_back_at_the_deadline(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.RUNNING, "requested": Requested.STOPPED, "generation": 2,
                                   "observed_generation": 1})
    press = decide(vm, Seen(Observation(RunState.RUNNING)), NOW, settings)
    assert (press.act, press.status, press.look_again) == (Act.POWERDOWN, Status.STOPPING, settings.shutdown_timeout)
    vm = vm.model_copy(update={"status": Status.STOPPING, **press.fields})
    assert decide(vm, Seen(Observation(RunState.RUNNING)), NOW, settings).act is Act.NOTHING
    late = NOW + timedelta(seconds=settings.shutdown_timeout)
    hard = decide(vm, Seen(Observation(RunState.RUNNING)), late, settings)
    assert (hard.act, hard.status, hard.event) == (Act.KILL, Status.STOPPED,
                                                    "stopped: hard stop after the guest ignored ACPI")


def test_a_fenced_hosts_process_is_never_adopted(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.KILLED})
    assert decide(vm, Seen(Observation(RunState.RUNNING), fenced=True), NOW, settings).act is Act.KILL
    assert decide(vm, Seen(Observation(RunState.RUNNING), fenced=False), NOW, settings).status is Status.STARTING


def test_a_failed_deletion_waits_for_its_deadline(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.ERROR, "requested": Requested.DELETED,
                                   "deadline": NOW + timedelta(seconds=30)})
    assert decide(vm, Seen(Observation(RunState.ABSENT)), NOW, settings).look_again == 30
    again = decide(vm, Seen(Observation(RunState.ABSENT)), NOW + timedelta(seconds=30), settings)
    assert (again.act, again.status) == (Act.DELETE, Status.DELETING)


def test_an_error_of_a_stopped_vm_stays_until_a_new_request(settings: Settings) -> None:
    """A disk that could not be made for a VM requested STOPPED: the ERROR and its reason stay (the
    old ladder wrote STOPPED over it on the next look, erasing the reason)."""
    vm = base().model_copy(update={"status": Status.ERROR, "requested": Requested.STOPPED, "error": "disk: full",
                                   "observed_generation": 1})
    assert decide(vm, Seen(Observation(RunState.ABSENT)), NOW, settings) == Step()


def test_a_hung_guest_is_stopped_hard_at_the_shutdown_deadline(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.STOPPING, "requested": Requested.STOPPED,
                                   "deadline": NOW - timedelta(seconds=1)})
    step = decide(vm, Seen(Observation(RunState.UNRESPONSIVE, "no answer")), NOW, settings)
    assert (step.act, step.status) == (Act.KILL, Status.STOPPED)


def test_a_host_death_after_a_stable_run_is_not_a_crash_loop(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.KILLED, "restarts": settings.max_restarts,
                                   "started_at": NOW - timedelta(days=30), "storage": "local"})
    step = decide(vm, Seen(Observation(RunState.ABSENT)), NOW, settings)
    assert (step.act, step.fields["restarts"]) == (Act.START, 1)


def test_a_process_older_than_its_placement_is_never_adopted(settings: Settings) -> None:
    """Placed back here after a fence released it: the QEMU still running was cut off its disk."""
    for status in (Status.SCHEDULED_DEPLOY, Status.STOPPED):
        vm = base().model_copy(update={"status": status, "generation": 2, "observed_generation": 1})
        assert decide(vm, Seen(Observation(RunState.RUNNING)), NOW, settings).act is Act.KILL


def test_a_guest_paused_on_a_disk_error_is_resumed_not_killed(settings: Settings) -> None:
    vm = base().model_copy(update={"status": Status.RUNNING})
    step = decide(vm, Seen(Observation(RunState.IO_ERROR)), NOW, settings)
    assert step.act is Act.RESUME and step.status is None and step.look_again == settings.io_retry
    fenced = decide(vm.model_copy(update={"status": Status.KILLED}), Seen(Observation(RunState.IO_ERROR), True),
                    NOW, settings)
    assert fenced.act is Act.KILL


def test_a_running_vms_nics_follow_its_record_by_hot_plug(settings: Settings) -> None:
    from ucloud_common.vm import NIC

    vm = base().model_copy(update={"status": Status.RUNNING, "observed_generation": 1,
                                   "networks": (NIC(network="n1", mac="02:00:00:00:00:01"),)})
    none = Seen(Observation(RunState.RUNNING, nics=frozenset()), networked=True)
    plug = decide(vm, none, NOW, settings)
    assert (plug.act, plug.nic, plug.writes()) == (Act.PLUG, "02:00:00:00:00:01", False)
    extra = Seen(Observation(RunState.RUNNING, nics=frozenset({"02:00:00:00:00:01", "02:00:00:00:00:09"})),
                 networked=True)
    assert (decide(vm, extra, NOW, settings).act, decide(vm, extra, NOW, settings).nic) == (Act.UNPLUG, "02:00:00:00:00:09")
    same = Seen(Observation(RunState.RUNNING, nics=frozenset({"02:00:00:00:00:01"})), networked=True)
    assert decide(vm, same, NOW, settings) == Step()
    # A host without an underlay gives no NICs: each NIC says so.
    unserved = decide(vm, Seen(Observation(RunState.RUNNING, nics=frozenset())), NOW, settings)
    assert unserved.act is Act.NOTHING and unserved.fields == {"nic_errors": {"02:00:00:00:00:01": NO_UNDERLAY}}
    told = vm.model_copy(update={"nic_errors": unserved.fields["nic_errors"]})
    assert decide(told, Seen(Observation(RunState.RUNNING, nics=frozenset())), NOW, settings) == Step()


def test_a_nic_that_failed_for_good_waits_for_the_next_start(settings: Settings) -> None:
    from ucloud_common.vm import NIC

    nics = (NIC(network="n1", mac="02:00:00:00:00:01"), NIC(network="n2", mac="02:00:00:00:00:02"))
    vm = base().model_copy(update={"status": Status.RUNNING, "observed_generation": 1, "networks": nics,
                                   "nic_errors": {"02:00:00:00:00:01": "network n1 does not exist"}})
    none = Seen(Observation(RunState.RUNNING, nics=frozenset()), networked=True)
    plug = decide(vm, none, NOW, settings)  # the failed one is not tried again hot; the other is plugged
    assert (plug.act, plug.nic) == (Act.PLUG, "02:00:00:00:00:02")
    plugged = Seen(Observation(RunState.RUNNING, nics=frozenset({"02:00:00:00:00:02"})), networked=True)
    assert decide(vm, plugged, NOW, settings) == Step()
    # Detached since: its failure is forgotten.
    detached = vm.model_copy(update={"networks": nics[1:]})
    forget = decide(detached, plugged, NOW, settings)
    assert forget.act is Act.NOTHING and forget.fields == {"nic_errors": {}}
    # A start tries every NIC again.
    stopped = vm.model_copy(update={"status": Status.SCHEDULED_DEPLOY})
    start = decide(stopped, Seen(Observation(RunState.ABSENT)), NOW, settings)
    assert start.act is Act.START and start.fields["nic_errors"] == {}


VNC = VNCEndpoint(address="10.0.0.7", port=5903, password="abcdefgh")


def test_the_tcp_vnc_server_is_recorded_while_its_qemu_runs_and_forgotten_with_it(settings: Settings) -> None:
    starting = base().model_copy(update={"status": Status.STARTING})
    up = decide(starting, Seen(Observation(RunState.RUNNING, vnc=VNC)), NOW, settings)
    assert up.status is Status.RUNNING and up.fields["guacamole"] == VNC
    running = base().model_copy(update={"status": Status.RUNNING, "observed_generation": 1})
    # An agent restarted with the setting changed records what its QEMU really has, both ways.
    assert decide(running, Seen(Observation(RunState.RUNNING, vnc=VNC)), NOW, settings).fields == {"guacamole": VNC}
    with_vnc = running.model_copy(update={"guacamole": VNC})
    assert decide(with_vnc, Seen(Observation(RunState.RUNNING)), NOW, settings).fields == {"guacamole": None}
    assert not decide(with_vnc, Seen(Observation(RunState.RUNNING, vnc=VNC)), NOW, settings).writes()


def test_every_step_away_from_running_forgets_the_tcp_vnc_server(settings: Settings) -> None:
    """Stopping, crashed, killed with its host, starting again here or elsewhere: no VNC endpoint (and
    password) of a QEMU that is gone is ever answered."""
    for status, requested, state in itertools.product(Status, Requested, RunState):
        vm = base().model_copy(update={"status": status, "requested": requested, "guacamole": VNC})
        step = decide(vm, Seen(Observation(state, vnc=VNC if state in LIVE else None)), NOW, settings)
        if step.status not in (None, status, Status.RUNNING, Status.SUSPENDED):
            assert step.fields.get("guacamole", VNC) is None, f"{status} requested {requested}, process {state}"
