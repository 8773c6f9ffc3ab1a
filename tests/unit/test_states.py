from pathlib import Path

import pytest

from ucloud_common.states import (
    ACTIONS,
    Action,
    ActionRefused,
    IllegalTransition,
    Requested,
    Status,
    TRANSITIONS,
    Writer,
    check_action,
    check_transition,
    render_markdown,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_seeds_problem_case_a_killed_vm_asked_to_suspend_is_refused_with_the_reason() -> None:
    with pytest.raises(ActionRefused) as refused:
        check_action(Action.SUSPEND, Status.KILLED, Requested.RUNNING)
    assert str(refused.value) == "cannot suspend: the VM is KILLED (suspend is possible when it is RUNNING)"


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("status", list(Status))
def test_every_action_in_every_status_follows_the_table(action: Action, status: Status) -> None:
    rule = ACTIONS[action]
    if status in rule.valid_in:
        requested = rule.only_requested or Requested.SUSPENDED
        assert check_action(action, status, requested) is (rule.requested or requested)
    else:
        with pytest.raises(ActionRefused, match=f"the VM is {status}"):
            check_action(action, status, Requested.RUNNING)


@pytest.mark.parametrize("action", [a for a in Action if a is not Action.DELETE])
def test_nothing_but_delete_is_accepted_once_deletion_was_requested(action: Action) -> None:
    with pytest.raises(ActionRefused, match="being deleted"):
        check_action(action, Status.RUNNING, Requested.DELETED)
    assert check_action(Action.DELETE, Status.DELETING, Requested.DELETED) is Requested.DELETED


def test_expected_request_results() -> None:
    assert check_action(Action.START, Status.STOPPED, Requested.STOPPED) is Requested.RUNNING
    assert check_action(Action.SHUTDOWN, Status.RUNNING, Requested.RUNNING) is Requested.STOPPED
    assert check_action(Action.RESUME, Status.SUSPENDED, Requested.SUSPENDED) is Requested.RUNNING
    with pytest.raises(ActionRefused):
        check_action(Action.RESUME, Status.RUNNING, Requested.RUNNING)
    with pytest.raises(ActionRefused):
        check_action(Action.START, Status.RUNNING, Requested.RUNNING)


def test_a_resize_needs_a_vm_stopped_and_asked_to_stay_so() -> None:
    assert check_action(Action.RESIZE, Status.STOPPED, Requested.STOPPED) is Requested.STOPPED
    with pytest.raises(ActionRefused) as refused:
        check_action(Action.RESIZE, Status.STOPPED, Requested.RUNNING)  # a start was asked: it may start now
    assert str(refused.value) == ("cannot resize: the VM is STOPPED but asked to be RUNNING (resize is possible "
                                  "when it is asked to be STOPPED too)")
    with pytest.raises(ActionRefused, match="the VM is RUNNING"):
        check_action(Action.RESIZE, Status.RUNNING, Requested.RUNNING)


def test_the_scheduler_reschedules_killed_vms_and_kills_those_of_dead_hosts() -> None:
    check_transition(Writer.SCHEDULER, Status.REQUESTED_NEW, Status.SCHEDULED_DEPLOY)
    check_transition(Writer.SCHEDULER, Status.KILLED, Status.SCHEDULED_DEPLOY)
    check_transition(Writer.SCHEDULER, Status.RUNNING, Status.KILLED)
    with pytest.raises(IllegalTransition):
        check_transition(Writer.SCHEDULER, Status.RUNNING, Status.SUSPENDED)
    with pytest.raises(IllegalTransition):
        check_transition(Writer.SCHEDULER, Status.STOPPED, Status.SCHEDULED_DEPLOY)


def test_the_agent_moves() -> None:
    for old, new in [
        (Status.SCHEDULED_DEPLOY, Status.STARTING), (Status.STARTING, Status.RUNNING),
        (Status.RUNNING, Status.SUSPENDED), (Status.SUSPENDED, Status.RUNNING),
        (Status.RUNNING, Status.STOPPING), (Status.STOPPING, Status.STOPPED),
        (Status.STOPPED, Status.STARTING), (Status.RUNNING, Status.KILLED),
        (Status.KILLED, Status.STARTING), (Status.RUNNING, Status.DELETING),
    ]:
        check_transition(Writer.AGENT, old, new)
    with pytest.raises(IllegalTransition, match="from REQUESTED_NEW to RUNNING"):
        check_transition(Writer.AGENT, Status.REQUESTED_NEW, Status.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(Writer.AGENT, Status.STOPPED, Status.RUNNING)


def test_staying_is_always_allowed_and_every_status_reachable() -> None:
    for writer in Writer:
        for status in Status:
            check_transition(writer, status, status)
    reachable = {Status.REQUESTED_NEW}
    for table in TRANSITIONS.values():
        for targets in table.values():
            reachable |= targets
    assert reachable == set(Status)


def test_the_readme_shows_the_table_as_the_code_has_it() -> None:
    assert render_markdown() in README.read_text()


def test_the_modules_worked_example_holds() -> None:
    import doctest

    import ucloud_common.states

    assert doctest.testmod(ucloud_common.states).failed == 0
