"""How a loop tells its failures: each distinct failure once, repeats counted and reminded, the
end of a run of failures told."""

from __future__ import annotations

import logging

import pytest

from ucloud_common.failures import Failures


class Unreachable(Exception):
    pass


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ucloud_common.failures"]


def fail(failures: Failures, exc: Exception, subject: str = "") -> None:
    with failures.caught(subject):
        raise exc


def test_the_same_failure_is_told_once_and_its_end_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    failures = Failures("monitor")
    with caplog.at_level(logging.INFO):
        for seconds in (1.5, 2.5, 3.5):  # one failure going on, though its numbers change
            fail(failures, ValueError(f"no answer for {seconds} s"))
        assert failures.failing()
        with failures.caught():
            pass
    assert not failures.failing()
    assert lines(caplog) == [
        "monitor failed: ValueError: no answer for 1.5 s; going on (told again only if it still fails in 600 s)",
        "monitor works again after failing 3 times in a row"]
    assert caplog.records[0].exc_info is not None, "the first failure comes with its traceback"


def test_a_different_failure_or_subject_is_told_and_expected_ones_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    failures = Failures("reconcile", (Unreachable,))
    fail(failures, Unreachable("etcd is away"), "vm=a")
    fail(failures, Unreachable("etcd is away"), "vm=b")
    fail(failures, RuntimeError("a bug"), "vm=a")
    fail(failures, RuntimeError("a bug"), "vm=a")
    assert [line.split(";")[0] for line in lines(caplog)] == [
        "reconcile (vm=a) failed: etcd is away", "reconcile (vm=b) failed: etcd is away",
        "reconcile (vm=a) failed: RuntimeError: a bug"]
    assert [r.exc_info is not None for r in caplog.records] == [False, False, True]


def test_a_failure_that_goes_on_is_reminded(caplog: pytest.LogCaptureFixture) -> None:
    failures = Failures("host-check", remind=0.0)
    for _ in range(3):
        fail(failures, ValueError("garbage"))
    assert lines(caplog)[1:] == ["host-check still fails, 2 times in 0 s: ValueError: garbage",
                                 "host-check still fails, 3 times in 0 s: ValueError: garbage"]


def test_an_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt), Failures("loop").caught():
        raise KeyboardInterrupt
