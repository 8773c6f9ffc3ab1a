"""Every failure of the etcd client library becomes one of the store's errors, and the store's one
call path fails over between members as its contract says. No etcd needed: calls fail on purpose."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyetcd.exceptions as etcd_errors
import pytest
from prometheus_client import REGISTRY
from pytest_mock import MockerFixture

from ucloud_common.config import Settings, load_settings
from ucloud_common.store import (
    Compacted,
    LeaseExpired,
    Store,
    StoreError,
    StoreRefused,
    StoreUnavailable,
)
from ucloud_common.store.failures import BY_CODE, never_sent, rule_for, store_error
from ucloud_common.store.members import Member, Members
from ucloud_common.vm import VMS


class FakeRpcError(grpc.RpcError):
    """What gRPC raises: an RpcError with a status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


# What each code becomes, with the details etcd (or gRPC) sends with it.
EXPECTED: dict[grpc.StatusCode, tuple[type[StoreError], str]] = {
    grpc.StatusCode.OK: (StoreUnavailable, ""),
    grpc.StatusCode.CANCELLED: (StoreUnavailable, "Channel closed!"),
    grpc.StatusCode.UNKNOWN: (StoreUnavailable, "Exception iterating requests!"),
    grpc.StatusCode.INVALID_ARGUMENT: (StoreRefused, "etcdserver: too many operations in txn request"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (StoreUnavailable, "Deadline Exceeded"),
    grpc.StatusCode.NOT_FOUND: (LeaseExpired, "etcdserver: requested lease not found"),
    grpc.StatusCode.ALREADY_EXISTS: (StoreRefused, ""),
    grpc.StatusCode.PERMISSION_DENIED: (StoreRefused, "etcdserver: permission denied"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (StoreUnavailable, "etcdserver: mvcc: database space exceeded"),
    grpc.StatusCode.FAILED_PRECONDITION: (StoreRefused, "etcdserver: authentication is not enabled"),
    grpc.StatusCode.ABORTED: (StoreUnavailable, ""),
    grpc.StatusCode.OUT_OF_RANGE: (Compacted, "etcdserver: mvcc: required revision has been compacted"),
    grpc.StatusCode.UNIMPLEMENTED: (StoreUnavailable, "Method not found: etcdserverpb.KV/Range"),
    grpc.StatusCode.INTERNAL: (StoreUnavailable, "Received RST_STREAM with error code 2"),
    grpc.StatusCode.UNAVAILABLE: (StoreUnavailable, "etcdserver: no leader"),
    grpc.StatusCode.DATA_LOSS: (StoreUnavailable, "etcdserver: corrupt cluster"),
    grpc.StatusCode.UNAUTHENTICATED: (StoreRefused, "etcdserver: invalid auth token"),
}


def test_every_grpc_status_code_has_a_rule() -> None:
    assert set(BY_CODE) == set(grpc.StatusCode) == set(EXPECTED)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_each_grpc_status_becomes_a_store_error_saying_what_where_and_why(code: grpc.StatusCode) -> None:
    expected, details = EXPECTED[code]
    error = store_error(FakeRpcError(code, details), "read /v1/vm/x", "10.0.0.1:2379")
    assert type(error) is expected
    assert "10.0.0.1:2379" in str(error) and "read /v1/vm/x" in str(error) and code.name in str(error)


def test_out_of_range_other_than_compaction_is_a_refusal() -> None:
    error = store_error(FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a "
                                     "future revision"), "list /v1/vm/", "m1")
    assert type(error) is StoreRefused


def all_subclasses(kind: type) -> set[type]:
    return {kind} | {sub for direct in kind.__subclasses__() for sub in all_subclasses(direct)}


EXPECTED_CLIENT: dict[type, type[StoreError]] = {
    etcd_errors.Etcd3Exception: StoreUnavailable,
    etcd_errors.WatchTimedOut: StoreUnavailable,
    etcd_errors.InternalServerError: StoreUnavailable,
    etcd_errors.ConnectionFailedError: StoreUnavailable,
    etcd_errors.ConnectionTimeoutError: StoreUnavailable,
    etcd_errors.NoServerAvailableError: StoreUnavailable,
    etcd_errors.PreconditionFailedError: StoreRefused,
    etcd_errors.RevisionCompactedError: Compacted,
}


def make(kind: type) -> BaseException:
    if kind is etcd_errors.RevisionCompactedError:
        return kind(41)
    return kind()  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", sorted(all_subclasses(etcd_errors.Etcd3Exception), key=lambda k: k.__name__),
                         ids=lambda k: k.__name__)
def test_each_exception_of_the_client_library_becomes_a_store_error(kind: type) -> None:
    error = store_error(make(kind), "watch /v1/vm/ from revision 7", "m1")
    # A subclass the library adds later falls back to its base's rule: never an unmapped exception.
    assert isinstance(error, EXPECTED_CLIENT.get(kind, StoreUnavailable)) and "m1" in str(error)
    if kind is etcd_errors.RevisionCompactedError:
        assert isinstance(error, Compacted) and error.compacted_revision == 41


def test_anything_else_from_a_call_is_an_unavailable_store() -> None:
    rule = rule_for(ValueError("Cannot invoke RPC on closed channel!"))
    assert rule.error is StoreUnavailable and rule.other_member


def test_only_a_call_that_never_connected_counts_as_never_sent() -> None:
    refused = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: "
                           "ipv4:127.0.0.1:2379: Failed to connect to remote host: Connection refused")
    assert never_sent(refused)
    assert not never_sent(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    assert not never_sent(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert not never_sent(etcd_errors.ConnectionFailedError())


# -- the one call path ---------------------------------------------------------------------------

REFUSED = "failed to connect to all addresses; last error: UNKNOWN: Connection refused"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    conf = tmp_path / "ucloud.conf"
    conf.write_text("")
    # Nothing listens there: every call below is answered by the test's own fake.
    return load_settings(config_file=conf, etcd_endpoints="127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", etcd_timeout=1.0)


@pytest.fixture
def members(settings: Settings) -> Iterator[Members]:
    members = Members(settings)
    yield members
    members.close()


class Script:
    """Answers calls per member: an exception to raise, or a value to return."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, member: Member, left: float, metadata: Any) -> Any:
        self.calls.append(member.netloc)
        answer = self.answers.get(member.netloc.rpartition(":")[2], "ok")
        if isinstance(answer, BaseException):
            raise answer
        return answer


def on(members: Members, port: str) -> None:
    """Make `members` use the member at 127.0.0.1:`port` now."""
    while members.current != f"127.0.0.1:{port}":
        members.failed(members.pick(), RuntimeError("test: move on"))
    for member in members._members:
        member.failed_at = None


def test_a_read_moves_to_another_member_at_once_and_stays_there(members: Members) -> None:
    on(members, "1")
    script = Script(**{"1": FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")})
    assert members.call("read /x", script, retry_safe=True, operation="range") == "ok"
    assert script.calls == ["127.0.0.1:1", "127.0.0.1:2"] and members.current == "127.0.0.1:2"
    assert members.call("read /x", script, retry_safe=True, operation="range") == "ok"
    assert script.calls[-1] == "127.0.0.1:2"


def test_a_write_that_may_have_reached_the_member_is_not_repeated_but_the_next_call_moves(members: Members) -> None:
    on(members, "1")
    script = Script(**{"1": FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")})
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1 is unavailable"):
        members.call("transaction (/v1/vm/a)", script, retry_safe=False, operation="txn")
    assert script.calls == ["127.0.0.1:1"]
    assert members.call("transaction (/v1/vm/a)", script, retry_safe=False, operation="txn") == "ok"
    assert script.calls[-1] != "127.0.0.1:1"


def test_a_write_that_never_left_is_repeated_on_another_member(members: Members) -> None:
    on(members, "1")
    script = Script(**{"1": FakeRpcError(grpc.StatusCode.UNAVAILABLE, REFUSED)})
    assert members.call("transaction (/v1/vm/a)", script, retry_safe=False, operation="txn") == "ok"
    assert script.calls == ["127.0.0.1:1", "127.0.0.1:2"]


def test_a_refusal_is_raised_at_once_and_does_not_move_the_store(members: Members) -> None:
    on(members, "1")
    script = Script(**{"1": FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")})
    with pytest.raises(StoreRefused, match="request is too large"):
        members.call("transaction (/v1/vm/a)", script, retry_safe=True, operation="txn")
    assert script.calls == ["127.0.0.1:1"] and members.current == "127.0.0.1:1"


def test_when_every_member_fails_the_error_names_them_all_and_comes_within_the_timeout(members: Members) -> None:
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, REFUSED)
    script = Script(**{"1": down, "2": down, "3": down})
    with pytest.raises(StoreUnavailable, match=r"etcd at 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3 is unavailable"):
        members.call("read /x", script, retry_safe=True, operation="range")
    assert sorted(set(script.calls)) == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert len(script.calls) == 6, "two passes over the members"


def test_etcd_calls_are_timed_and_failures_counted_per_operation(members: Members) -> None:
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, REFUSED)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    calls, errors = (sample("ucloud_etcd_call_seconds_count", operation="count"),
                     sample("ucloud_etcd_errors_total", operation="count", error="StoreUnavailable"))
    assert members.call("count /x", Script(), retry_safe=True, operation="count") == "ok"
    with pytest.raises(StoreUnavailable):
        members.call("count /x", Script(**{"1": down, "2": down, "3": down}), retry_safe=True, operation="count")
    assert sample("ucloud_etcd_call_seconds_count", operation="count") - calls == 2
    assert sample("ucloud_etcd_errors_total", operation="count", error="StoreUnavailable") - errors == 1


def test_a_member_that_failed_is_never_refused_when_no_other_is_better(tmp_path: Path) -> None:
    """pyetcd refuses every call for 300 s once all members failed; the store always tries."""
    conf = tmp_path / "one.conf"
    conf.write_text("")
    single = Members(load_settings(config_file=conf, etcd_endpoints="127.0.0.1:1", etcd_timeout=1.0))
    script = Script(**{"1": FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")})
    with pytest.raises(StoreUnavailable):
        single.call("read /x", script, retry_safe=True, operation="range")
    script.answers["1"] = "back"
    assert single.call("read /x", script, retry_safe=True, operation="range") == "back"
    single.close()


def test_an_expired_token_is_renewed_once(settings: Settings, mocker: MockerFixture) -> None:
    members = Members(settings.model_copy(update={"etcd_user": "root", "etcd_password": "pw"}))
    tokens = iter(["t1", "t2"])
    authenticate = mocker.patch.object(Members, "_authenticate", autospec=True,
                                       side_effect=lambda self, *_: setattr(self, "_token", next(tokens)))
    seen: list[Any] = []

    def rpc(member: Member, left: float, metadata: Any) -> str:
        seen.append(metadata)
        if metadata == (("token", "t1"),):
            raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
        return "ok"

    assert members.call("read /x", rpc, retry_safe=True, operation="range") == "ok"
    assert seen == [(("token", "t1"),), (("token", "t2"),)] and authenticate.call_count == 2
    members.close()


def test_a_closed_store_says_so(members: Members) -> None:
    members.close()
    with pytest.raises(StoreUnavailable, match="the store was closed"):
        members.call("read /x", Script(), retry_safe=True, operation="range")


def test_the_store_maps_a_failing_stub_and_fails_over(settings: Settings, mocker: MockerFixture) -> None:
    """Through the Store: a read whose first member's stub fails is answered by the next member."""
    store = Store(settings)
    on(store._members, "1")
    first, second = store._members._members[0], store._members._members[1]
    mocker.patch.object(first, "kv").Range.side_effect = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    answer = mocker.MagicMock(kvs=[])
    mocker.patch.object(second, "kv").Range.return_value = answer
    assert store.get(VMS, "nothing") is None
    assert store.endpoint == "127.0.0.1:2"
    store.close()
