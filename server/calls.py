"""What every call shares: its request id, :class:`CallError` (ends a call with a status code), and the
status code a cancelled or finished call counts as in the metrics."""

from __future__ import annotations

import uuid

import grpc

DEADLINE_GRACE_S = 0.5  # a cancel this close to the server's copy of the deadline is the deadline


class CallError(Exception):
    """Ends a call with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's ``x-request-id`` metadata (1 to 64 characters), else a fresh random id."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return uuid.uuid4().hex[:16]


def cancel_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """How a cancelled call ended for the metrics: its deadline passed, or the client cancelled it.

    A client cancels at its own deadline, which the server may see before its copy of the deadline (sent as a
    timeout, so transit time and a busy server's late start shift it): within ``DEADLINE_GRACE_S`` of it
    counts as the deadline. 250 ms was too little on a loaded 2-core CI machine."""
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= DEADLINE_GRACE_S
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def finished_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """How a call whose handler finished ended for the metrics: OK, unless its client cancelled it or its
    deadline passed (which gRPC may not have marked as cancelled yet) and it never got the response."""
    remaining = context.time_remaining()
    if context.cancelled() or (remaining is not None and remaining <= 0):
        return cancel_code(context)
    return grpc.StatusCode.OK
