"""Scenarios in simulated time: each `scenarios/<name>.cmd` is a short list of commands replayed
against the real scheduler and agents (tests/sim/world.py); the log of what they decided must
equal `scenarios/<name>.log`, and the invariants hold after every simulated second.

To accept a changed log after reading its diff: UCLOUD_SIM_UPDATE=1 pytest tests/sim.

Commands (one per line, `#` starts a comment):
    hosts H...            agents start on these hosts        scheduler S       a scheduler starts
    create VM [rbd] [image=I] [requested=R]                  ask VM ACTION     as the API would
    wait N                N simulated seconds                expect VM STATUS [on H]
    expect-gone VM        no record, process, file or disk   expect-starts VM N   started N times in all
    record VM STATUS WHY  the record says so (an older agent, a hand edit)
    converged             every VM is what was asked (where its host lives)
    crash|poweroff|panic|pause-guest|hang|recover|ignore-acpi VM       its guest misbehaves
    fail-start VM WHY...  the next start fails               fail-first-answer VM
    slow VM S             each QMP answer takes S seconds (beyond the QMP timeout: none comes)
    lose-next VM CMD      the next QMP command CMD (pause, resume, reset, powerdown) times out, undone
    disk-full VM | disk-freed VM    writes fail (the guest pauses on an I/O error), and work again
    ceph-down | ceph-up   making an rbd disk times out, and works again
    partition H | heal H  the agent is cut off from etcd, and back (its guests run on)
    host-dies H | host-boots H      the machine goes (guests too), and comes back
    restart-agent H       kill -9 of the agent, a new one at once
    fence-fails WHY... | fence-works             scheduler-dies S
    etcd-down | etcd-up   nobody reaches etcd; then a new etcd leader renews every lease
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.sim.world import World, new_world
from ucloud_common import clock
from ucloud_common.states import Status
from ucloud_common.vm import VMS
from ucloud_vm.driver import RunState

SCENARIOS = Path(__file__).parent / "scenarios"


def _guest(world: World, vm: str) -> tuple[str, str]:
    """The host whose hypervisor runs the VM's guest (not cut off by a fence), found without etcd."""
    hosts = [h.name for h in world.hosts.values() if vm in h.driver.guests and not h.driver.guests[vm].fenced]
    assert hosts, f"{vm} runs nowhere"
    return hosts[0], vm


def execute(world: World, words: list[str]) -> None:
    command, args = words[0], words[1:]
    if command == "hosts":
        for name in args:
            world.add_host(name)
    elif command == "scheduler":
        world.add_scheduler(args[0])
    elif command == "create":
        options = dict(a.split("=", 1) for a in args[1:] if "=" in a)
        world.create(args[0], storage="rbd" if "rbd" in args[1:] else "local", **options)
    elif command == "ask":
        world.ask(args[0], args[1])
    elif command == "wait":
        world.run(int(args[0]))
    elif command == "expect":
        vm = world.vm(args[0])
        assert vm.status is Status(args[1]), f"{args[0]} is {vm.status}, not {args[1]} ({vm.error})"
        if len(args) == 4:
            assert vm.host == args[3], f"{args[0]} is on {vm.host or 'no host'}, not {args[3]}"
        world.say("check", " ".join(words) + ": ok")
    elif command == "expect-gone":
        assert world.store.get(VMS, args[0]) is None, f"{args[0]} is still recorded"
        for host in world.hosts.values():
            assert args[0] not in host.driver.guests and args[0] not in host.driver.leftovers(), \
                f"{args[0]} left a process or files on {host.name}"
        assert args[0] not in world.shared_disks, f"{args[0]} left its disk"
        world.say("check", " ".join(words) + ": ok")
    elif command == "expect-starts":
        starts = sum(host.driver.calls.count(f"start {args[0]}") for host in world.hosts.values())
        assert starts == int(args[1]), f"{args[0]} was started {starts} times"
        world.say("check", " ".join(words) + ": ok")
    elif command == "record":
        world.store.update(VMS, args[0], lambda vm: vm.evolve(status=Status(args[1]), error=" ".join(args[2:])))
        world.say("fault", f"{args[0]} recorded {args[1]} by another writer: {' '.join(args[2:])}")
    elif command == "converged":
        world.check_converged()
        world.say("check", "converged: ok")
    elif command in ("crash", "poweroff", "panic", "pause-guest", "hang", "recover", "ignore-acpi"):
        host, vm = _guest(world, args[0])
        driver = world.hosts[host].driver
        {"crash": lambda: driver.crash(vm), "poweroff": lambda: driver.enter(vm, RunState.SHUTDOWN),
         "panic": lambda: driver.enter(vm, RunState.GUEST_PANICKED),
         "pause-guest": lambda: driver.enter(vm, RunState.PAUSED), "hang": lambda: driver.hang(vm),
         "recover": lambda: driver.recover(vm), "ignore-acpi": lambda: driver.ignore_acpi(vm)}[command]()
        world.say("fault", f"{vm} on {host}: {command}")
    elif command == "lose-next":
        host, vm = _guest(world, args[0])
        world.hosts[host].driver.lose_next(vm, args[1])
        world.say("fault", f"{vm} on {host}: the next {args[1]} times out, undone")
    elif command in ("disk-full", "disk-freed"):
        host, vm = _guest(world, args[0])
        world.hosts[host].driver.fill_disk(vm, command == "disk-full")
        world.say("fault", f"{vm} on {host}: {'its disk takes no more writes' if command == 'disk-full' else 'its disk takes writes again'}")
    elif command in ("ceph-down", "ceph-up"):
        world.ceph_down = command == "ceph-down"
        world.say("fault", "Ceph does not answer" if world.ceph_down else "Ceph answers again")
    elif command == "slow":
        host, vm = _guest(world, args[0])
        world.hosts[host].driver.slow_down(vm, float(args[1]))
        world.say("fault", f"{vm} on {host}: every QMP answer takes {args[1]} s")
    elif command in ("fail-start", "fail-first-answer"):
        for host in world.hosts.values():  # wherever it lands
            if command == "fail-start":
                host.driver.fail_next_start(args[0], " ".join(args[1:]))
            else:
                host.driver.fail_first_answer(args[0])
        world.say("fault", " ".join(words))
    elif command in ("partition", "heal"):
        world.hosts[args[0]].store.unavailable = command == "partition"
        world.say("fault", f"{args[0]} {'cut off from' if command == 'partition' else 'reaches'} etcd")
    elif command == "host-dies":
        host = world.hosts[args[0]]
        host.up = False
        host.driver.guests.clear()
        world.say("fault", f"{args[0]} dies with its guests")
    elif command == "host-boots":
        world.hosts[args[0]].up = True
        world.restart_agent(args[0])
        world.hosts[args[0]].lease = 0  # its old lease is gone: the next renewal registers again
    elif command == "restart-agent":
        world.restart_agent(args[0])
    elif command == "fence-fails":
        world.fence.fails = " ".join(args)
        world.say("fault", f"fencing fails: {world.fence.fails}")
    elif command == "fence-works":
        world.fence.fails = ""
        world.say("fault", "fencing works again")
    elif command == "scheduler-dies":
        world.schedulers[args[0]].up = False
        world.say("fault", f"scheduler {args[0]} dies")
    elif command in ("etcd-down", "etcd-up"):
        for actor in [world, *world.hosts.values(), *world.schedulers.values()]:
            actor.store.unavailable = command == "etcd-down"
        if command == "etcd-up":
            with world.store.keyspace.lock:
                world.store.keyspace.promote()
        world.say("fault", "etcd unreachable" if command == "etcd-down" else "etcd back (leases renewed)")
    else:
        raise ValueError(f"unknown command {command}")


def replay(cmd: Path, tmp: Path) -> list[str]:
    world = new_world(tmp)
    with clock.simulated(world.clock):
        for number, line in enumerate(cmd.read_text().splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            try:
                execute(world, words)
            except AssertionError as exc:
                raise AssertionError(f"{cmd.name}:{number}: {line.strip()}: {exc}\n" + "\n".join(world.log)) from None
        world.check_converged()
    return world.log


@pytest.mark.parametrize("cmd", sorted(SCENARIOS.glob("*.cmd")), ids=lambda p: p.stem)
def test_scenario(cmd: Path, tmp_path: Path) -> None:
    log = replay(cmd, tmp_path)
    expected = cmd.with_suffix(".log")
    if os.environ.get("UCLOUD_SIM_UPDATE") == "1":
        expected.write_text("\n".join(log) + "\n")
    assert expected.exists(), f"no {expected.name}: run with UCLOUD_SIM_UPDATE=1 and read it"
    assert "\n".join(log) + "\n" == expected.read_text()


def test_there_are_enough_scenarios() -> None:
    assert len(list(SCENARIOS.glob("*.cmd"))) >= 15
