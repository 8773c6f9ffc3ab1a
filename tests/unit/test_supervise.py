"""The supervision of a daemon's essential threads: the first that ends early ends the daemon."""

from __future__ import annotations

import threading

import click
import pytest

from ucloud_common.cli import exit_if_failed
from ucloud_common.supervise import Supervisor


def test_a_thread_that_raises_stops_the_daemon_and_says_why() -> None:
    stop = threading.Event()
    supervisor = Supervisor(stop)
    supervisor.start("steady", lambda: stop.wait())
    supervisor.start("follow-vm", lambda: (_ for _ in ()).throw(RuntimeError("garbage in the view")))
    assert stop.wait(2)
    assert supervisor.join(2) == []
    assert supervisor.failure == "essential thread follow-vm raised RuntimeError: garbage in the view"


def test_a_thread_that_returns_early_stops_the_daemon_too() -> None:
    stop = threading.Event()
    supervisor = Supervisor(stop)
    supervisor.start("election", lambda: None)
    assert stop.wait(2)
    assert supervisor.failure == "essential thread election returned although the daemon was not stopping"


def test_threads_ending_because_the_daemon_stops_are_no_failure() -> None:
    stop = threading.Event()
    supervisor = Supervisor(stop)
    for name in ("a", "b"):
        supervisor.start(name, lambda: stop.wait())
    stop.set()
    assert supervisor.join(2) == [] and supervisor.failure is None


def test_only_the_first_failure_is_kept() -> None:
    stop = threading.Event()
    supervisor = Supervisor(stop)
    supervisor.fail("loop", "raised KeyError: 'h1'")
    supervisor.fail("monitor", "raised OSError")
    assert supervisor.failure == "essential thread loop raised KeyError: 'h1'" and stop.is_set()


def test_join_reports_threads_that_do_not_end() -> None:
    stop, never = threading.Event(), threading.Event()
    supervisor = Supervisor(stop)
    supervisor.start("stuck", lambda: never.wait())
    stop.set()
    assert supervisor.join(0.2) == ["stuck"]
    never.set()


def test_a_failed_daemon_exits_1_with_one_line_saying_why() -> None:
    exit_if_failed("ucloud-scheduler s1", None)  # an ordinary stop: nothing happens, exit 0
    with pytest.raises(click.ClickException) as raised:
        exit_if_failed("ucloud-scheduler s1", "essential thread follow-vm raised RuntimeError: x")
    assert raised.value.exit_code == 1
    assert raised.value.message.startswith("ucloud-scheduler s1 stopped: essential thread follow-vm raised")


def test_a_failure_wakes_a_main_loop_that_waits_on_something_else() -> None:
    stop, woken = threading.Event(), threading.Event()
    supervisor = Supervisor(stop, wake=woken.set)
    supervisor.start("follow-host", lambda: None)
    assert woken.wait(2) and stop.is_set()
