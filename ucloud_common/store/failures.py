"""How the etcd client's failures become the store's errors, and which of them mean "try another
member".

Rules as data: one row per gRPC status code (etcd's server errors arrive as gRPC statuses; see
etcd's api/v3rpc/rpctypes/error.go for which code each carries), one per pyetcd exception. A code
or exception without a row cannot exist: unit tests enumerate `grpc.StatusCode` and every subclass
of `pyetcd.exceptions.Etcd3Exception` and check each has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pyetcd.exceptions as etcd_errors

from ucloud_common.store.errors import (
    Compacted,
    LeaseExpired,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    TooLarge,
)


@dataclass(frozen=True)
class Rule:
    """What a failure means: the store error it becomes, whether another member may well answer
    (this one is down, cut off from its leader, overloaded or not etcd at all), and a few words
    saying why, for the message."""

    error: type[StoreError]
    other_member: bool
    meaning: str


# etcd's words for a request over --max-request-bytes (INVALID_ARGUMENT), and gRPC's for one over the
# server's message limit (RESOURCE_EXHAUSTED, which otherwise means etcd is out of space or
# overloaded: temporary). Either way the write can never fit: it must not look like an outage.
_TOO_LARGE = Rule(TooLarge, False, "the request is larger than etcd takes (--max-request-bytes, 1.5 MiB by "
                  "default)")
_TOO_LARGE_DETAILS = ("request is too large", "larger than max")

_UNAVAILABLE = Rule(StoreUnavailable, True, "the member is unreachable, restarting or without a leader")
_REFUSED = Rule(StoreRefused, False, "etcd refused the request")

BY_CODE: dict[grpc.StatusCode, Rule] = {
    grpc.StatusCode.UNAVAILABLE: _UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Rule(StoreUnavailable, True, "no answer within etcd_timeout"),
    grpc.StatusCode.CANCELLED: Rule(StoreUnavailable, True, "the call was cancelled (its connection closed)"),
    grpc.StatusCode.UNKNOWN: Rule(StoreUnavailable, True, "the member failed in an unknown way"),
    grpc.StatusCode.INTERNAL: Rule(StoreUnavailable, True, "the member or the connection failed internally"),
    grpc.StatusCode.DATA_LOSS: Rule(StoreUnavailable, True, "the member reports a corrupt cluster"),
    grpc.StatusCode.ABORTED: Rule(StoreUnavailable, True, "the member aborted the call"),
    grpc.StatusCode.UNIMPLEMENTED: Rule(StoreUnavailable, True, "the endpoint does not serve etcd's v3 API "
                                        "(a wrong port, or etcd older than 3.4?)"),
    # "too many requests" is one member's backlog; "database space exceeded" needs an operator
    # (compact, defragment, disarm the NOSPACE alarm). Either way, later may work.
    grpc.StatusCode.RESOURCE_EXHAUSTED: Rule(StoreUnavailable, True, "etcd is overloaded or out of space"),
    # A token that expired (simple tokens do after --auth-token-ttl, 5 min idle) is renewed by the
    # store once before this is raised.
    grpc.StatusCode.UNAUTHENTICATED: Rule(StoreRefused, False, "etcd refused the credentials"),
    grpc.StatusCode.PERMISSION_DENIED: Rule(StoreRefused, False, "the etcd user lacks the permission"),
    grpc.StatusCode.INVALID_ARGUMENT: Rule(StoreRefused, False, "etcd rejected the request as invalid or "
                                           "too large"),
    grpc.StatusCode.FAILED_PRECONDITION: _REFUSED,
    grpc.StatusCode.ALREADY_EXISTS: _REFUSED,
    # etcd's only NOT_FOUND on the KV, lease and watch services is "requested lease not found".
    grpc.StatusCode.NOT_FOUND: Rule(LeaseExpired, False, "the lease expired or was revoked"),
    # "required revision has been compacted", or a future revision / a TTL too large (refused).
    grpc.StatusCode.OUT_OF_RANGE: Rule(Compacted, False, "the revision is out of range"),
    grpc.StatusCode.OK: Rule(StoreUnavailable, True, "the call ended without an answer"),
}

BY_EXCEPTION: dict[type[Exception], Rule] = {
    etcd_errors.ConnectionFailedError: _UNAVAILABLE,
    etcd_errors.ConnectionTimeoutError: BY_CODE[grpc.StatusCode.DEADLINE_EXCEEDED],
    etcd_errors.InternalServerError: BY_CODE[grpc.StatusCode.INTERNAL],
    etcd_errors.NoServerAvailableError: Rule(StoreUnavailable, True, "every member failed recently"),
    etcd_errors.WatchTimedOut: Rule(StoreUnavailable, True, "the watch was not confirmed in time"),
    etcd_errors.PreconditionFailedError: _REFUSED,
    etcd_errors.RevisionCompactedError: Rule(Compacted, False, "the revision was compacted"),
    etcd_errors.Etcd3Exception: Rule(StoreUnavailable, True, "the etcd client failed"),
}

# The only phrase gRPC uses for a call that failed before a connection existed: such a call never
# reached a member, so even a write may be sent to another one (grpc-core's pick-first and
# round-robin policies, 1.4x–1.85; if a later gRPC words it differently, writes merely stop being
# retried on another member, which is the safe direction).
_NEVER_SENT = "failed to connect to all addresses"


def rule_for(exc: BaseException) -> Rule:
    """The rule for a failure of a call to etcd. Anything not from gRPC or pyetcd is an unknown
    failure of the connection (for example gRPC's ValueError on a closed channel)."""
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        rule = BY_CODE.get(exc.code(), _UNAVAILABLE)
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED) and any(
                phrase in _details(exc) for phrase in _TOO_LARGE_DETAILS):
            return _TOO_LARGE
        if rule.error is Compacted and "compacted" not in _details(exc):
            return Rule(StoreRefused, False, rule.meaning)
        return rule
    for kind in type(exc).__mro__:
        if kind in BY_EXCEPTION:
            return BY_EXCEPTION[kind]  # type: ignore[index]
    return Rule(StoreUnavailable, True, "the call failed")


def store_error(exc: BaseException, what: str, where: str) -> StoreError:
    """The store's error for `exc`, raised by `what` (e.g. "read /v1/vm/…") on `where` (a member,
    or every member when all failed)."""
    rule = rule_for(exc)
    if rule.error is Compacted:
        return Compacted(f"etcd at {where}: {what}: {rule.meaning} ({describe(exc)})",
                         int(getattr(exc, "compacted_revision", 0) or 0))
    verb = "is unavailable" if rule.error is StoreUnavailable else "refused the request"
    return rule.error(f"etcd at {where} {verb} ({what}): {rule.meaning} ({describe(exc)})")


def never_sent(exc: BaseException) -> bool:
    """True if the call certainly never reached a member, so repeating even a write elsewhere is safe."""
    return (isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None))
            and exc.code() is grpc.StatusCode.UNAVAILABLE and _NEVER_SENT in _details(exc))


def describe(exc: BaseException) -> str:
    """gRPC's code and details, or the exception's own words."""
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return f"{exc.code().name}: {_details(exc)}"
    return str(exc) or type(exc).__name__


def _details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    return str(details() if callable(details) else "") or ""
