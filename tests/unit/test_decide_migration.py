"""The agents' decisions about a live migration, every cell: the source's (status × requested × run
state × phase × what QEMU says of the migration × cancelled or not × deadline) and the target's
(phase × run state). No combination raises; every status and every migration step is one its
party may take; the VM changes host only once QEMU said the guest arrived."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ucloud_common.config import Settings, load_settings
from ucloud_common.specs import Specs
from ucloud_common.states import MigrationPhase, Party, Requested, Status, Writer, check_migration_step, check_transition
from ucloud_common.vm import VM, Migration, placed_on
from ucloud_vm.decide import Act, Seen, decide, decide_incoming
from ucloud_vm.driver import MigrationInfo, Observation, RunState

NOW = datetime(2027, 1, 1, tzinfo=UTC)
QEMU_SAYS = (None, MigrationInfo("none"), MigrationInfo("active"), MigrationInfo("completed", 7, 1000),
             MigrationInfo("failed", error="Broken pipe"), MigrationInfo("cancelled"))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    conf: Path = tmp_path_factory.mktemp("conf") / "empty.conf"
    conf.write_text("")
    return load_settings(conf)


def migrating(phase: MigrationPhase, **fields: object) -> VM:
    vm = VM(uuid="u1", owner="alice", name="web", specs=Specs(cpu=1, ram=1, ssd=1), image="tiny", storage="rbd",
            status=Status.RUNNING, migrate_to="*", migrate_generation=3, generation=3, observed_generation=3,
            disk_clients=("192.0.2.1:0/1",), **placed_on("h1"))
    migration = Migration(source="h1", target="h2", phase=phase, request=3, address="192.0.2.2:4444",
                          target_clients=("192.0.2.2:0/2",))
    return vm.model_copy(update={"migration": migration, **fields})


def test_every_source_cell_is_a_step_its_party_may_take(settings: Settings) -> None:
    for status, requested, state, phase, info, cancelled, deadline in itertools.product(
            (Status.RUNNING, Status.SUSPENDED, Status.MIGRATING), Requested, RunState, MigrationPhase, QEMU_SAYS,
            (False, True), (None, NOW - timedelta(seconds=1), NOW + timedelta(seconds=30))):
        vm = migrating(phase, status=status, requested=requested, migrate_to="" if cancelled else "*",
                       deadline=deadline)
        step = decide(vm, Seen(Observation(state), migration=info), NOW, settings)
        cell = (status, requested, state, phase, info, cancelled, deadline)
        if step.status is not None:
            check_transition(Writer.AGENT, vm.status, step.status)
        if "migration" in step.fields:
            new = step.fields["migration"]
            check_migration_step(Party.SOURCE, phase, new.phase if new else None)
            if new is None:
                assert step.fields["migrated_generation"] == 3, cell
        if "hostname" in step.fields:  # handed over: only once QEMU said so
            assert step.fields["hostname"] == "/v1/host/h2" and info is not None and info.status == "completed", cell
            assert step.fields["disk_clients"] == ("192.0.2.2:0/2",), cell
        if step.act is Act.SEND:
            assert state in (RunState.RUNNING, RunState.PAUSED) and not cancelled, cell


def test_a_migration_runs_chosen_listening_sending_handed_over(settings: Settings) -> None:
    seen = Seen(Observation(RunState.RUNNING))
    waiting = decide(migrating(MigrationPhase.CHOSEN), seen, NOW, settings)
    assert waiting.act is Act.NOTHING and waiting.fields["deadline"] == NOW + timedelta(
        seconds=settings.migration_prepare_timeout)
    send = decide(migrating(MigrationPhase.LISTENING), seen, NOW, settings)
    assert (send.act, send.status, send.fields["migration"].phase) == (Act.SEND, Status.MIGRATING,
                                                                       MigrationPhase.RUNNING)
    sending = migrating(MigrationPhase.RUNNING, status=Status.MIGRATING, deadline=NOW + timedelta(seconds=60))
    assert decide(sending, Seen(Observation(RunState.RUNNING), migration=MigrationInfo("active")), NOW,
                  settings).act is Act.NOTHING
    done = decide(sending, Seen(Observation(RunState.POSTMIGRATE), migration=MigrationInfo("completed", 7, 1000)),
                  NOW, settings)
    assert done.status is Status.RUNNING and done.fields["migration"] is None
    assert done.event == "migrated from h1 to h2 (downtime 7 ms, 1.000 s in all)"
    # Too slow: cancelled in QEMU first, ended once QEMU says so.
    late = sending.model_copy(update={"deadline": NOW - timedelta(seconds=1)})
    assert decide(late, Seen(Observation(RunState.RUNNING), migration=MigrationInfo("active")), NOW,
                  settings).act is Act.CANCEL_MIGRATION
    ended = decide(late, Seen(Observation(RunState.RUNNING), migration=MigrationInfo("cancelled")), NOW, settings)
    assert ended.status is Status.RUNNING and ended.fields["migration"] is None and "did not complete" in ended.event


def test_a_source_that_crashes_mid_migration_ends_it(settings: Settings) -> None:
    vm = migrating(MigrationPhase.RUNNING, status=Status.MIGRATING)
    step = decide(vm, Seen(Observation(RunState.ABSENT, "killed")), NOW, settings)
    assert step.status is Status.KILLED and step.fields["migration"] is None


def test_every_target_cell_is_a_step_its_party_may_take() -> None:
    for phase, state in itertools.product(MigrationPhase, RunState):
        vm = migrating(phase)
        step = decide_incoming(vm, vm.migration, Seen(Observation(state)))  # type: ignore[arg-type]
        assert step.status is None, (phase, state)
        if "migration" in step.fields:
            check_migration_step(Party.TARGET, phase, step.fields["migration"].phase)
        if step.act is Act.RECEIVE:
            assert phase is MigrationPhase.CHOSEN and state is RunState.ABSENT
    failed = decide_incoming(migrating(MigrationPhase.RUNNING), migrating(MigrationPhase.RUNNING).migration,
                             Seen(Observation(RunState.ABSENT, "killed")))  # type: ignore[arg-type]
    assert failed.fields["migration"].phase is MigrationPhase.FAILED and "exited: killed" in failed.fields[
        "migration"].error


def test_the_source_does_not_send_a_guest_whose_nics_differ_from_its_record(settings: Settings) -> None:
    from ucloud_common.vm import NIC

    nic = NIC(network="n1", mac="02:00:00:00:00:01", slot=16)
    vm = migrating(MigrationPhase.LISTENING, networks=(nic,))
    running = Observation(RunState.RUNNING, nics=frozenset({nic.mac}))
    assert decide(vm, Seen(running, networked=True), NOW, settings).act is Act.SEND
    for seen, record in ((Observation(RunState.RUNNING, nics=frozenset()), vm),  # its hot-plug still to come
                         (running, vm.model_copy(update={"nic_errors": {nic.mac: "tap busy"}})),
                         (running, vm.model_copy(update={"networks": ()}))):  # its unplug still to come
        step = decide(record, Seen(seen, networked=True), NOW, settings)
        assert step.act is not Act.SEND and step.fields["migration"] is None, step
        assert "its NICs here are not yet those of its record" in step.event
