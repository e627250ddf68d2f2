"""Exceptions raised by the SDK. Every gRPC failure is re-raised as one of these (``raise X(...) from exc``)::

    ASRError                  base; ``.code`` is the gRPC status name, ``.request_id`` the server's id if any
    ├── InvalidArgument       bad audio or config, unknown model (INVALID_ARGUMENT, OUT_OF_RANGE, NOT_FOUND,
    │                         FAILED_PRECONDITION); also a ``ValueError``
    ├── Unauthenticated       missing or wrong token (UNAUTHENTICATED)
    ├── PermissionDenied      the token may not do this (PERMISSION_DENIED)
    ├── ResourceExhausted     too many streams, message too large, audio too long (RESOURCE_EXHAUSTED)
    ├── Unavailable           server unreachable or shutting down (UNAVAILABLE); the only one retried
    ├── DeadlineExceeded      the call's timeout passed, or a stream idled too long (DEADLINE_EXCEEDED)
    ├── Cancelled             the call was cancelled (CANCELLED)
    └── ServerError           anything else: INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, ABORTED
"""

from __future__ import annotations

import grpc

__all__ = [
    "ASRError",
    "Cancelled",
    "DeadlineExceeded",
    "InvalidArgument",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "from_grpc",
]


class ASRError(Exception):
    """Base class of every error the SDK raises for a failed call."""

    def __init__(self, message: str, *, code: str = "UNKNOWN", request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class InvalidArgument(ASRError, ValueError):
    """The request is wrong (audio that cannot be decoded, options out of bounds, unknown model)."""


class Unauthenticated(ASRError):
    """The server wants a bearer token and got none or a wrong one."""


class PermissionDenied(ASRError):
    """The credentials are valid but may not make this call."""


class ResourceExhausted(ASRError):
    """The server is at its limit (streams, message size, audio length); retry later or send less."""


class Unavailable(ASRError):
    """The server cannot be reached or is shutting down; safe to retry."""


class DeadlineExceeded(ASRError):
    """The call took longer than its timeout."""


class Cancelled(ASRError):
    """The call was cancelled."""


class ServerError(ASRError):
    """The server failed (INTERNAL, UNKNOWN, UNIMPLEMENTED...)."""


_BY_CODE: dict[grpc.StatusCode, type[ASRError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    # grpc.RpcError itself has no accessors; the raised objects are also grpc.Call / grpc.aio.AioRpcError.
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)  # type: ignore[attr-defined]
    return code or grpc.StatusCode.UNKNOWN, details or ""


def is_retryable(exc: BaseException) -> bool:
    """True for UNAVAILABLE, the one status where the request surely did no work and a retry is safe."""
    return isinstance(exc, grpc.RpcError) and _status(exc)[0] == grpc.StatusCode.UNAVAILABLE


def from_grpc(exc: grpc.RpcError, target: str = "", request_id: str = "") -> ASRError:
    """The SDK exception for a failed gRPC call; raise it ``from exc``."""
    return from_status(*_status(exc), target, request_id)


def from_status(code: grpc.StatusCode, details: str, target: str = "", request_id: str = "") -> ASRError:
    """The SDK exception for a call that ended with ``code``."""
    cls = _BY_CODE.get(code, ServerError)
    message = details or code.name.lower().replace("_", " ")
    if cls is Unavailable and target:
        message = f"{target}: {message}"
    return cls(message, code=code.name, request_id=request_id)
