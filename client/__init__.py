"""Client side of las-asr: the SDK (:class:`Client`, :class:`AsyncClient`), its types and errors, and the CLI.

>>> from client import Client
>>> with Client("localhost:50051") as asr:
...     print(asr.recognize("speech.wav").text)
"""

from client.errors import (
    ASRError,
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from client.sdk import AsyncClient, Client
from client.types import (
    Alternative,
    ModelInfo,
    RecognitionConfig,
    Segment,
    StreamingConfig,
    StreamingResult,
    Transcript,
    WordInfo,
)

__all__ = [
    "ASRError",
    "Alternative",
    "AsyncClient",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "InvalidArgument",
    "ModelInfo",
    "PermissionDenied",
    "RecognitionConfig",
    "ResourceExhausted",
    "Segment",
    "ServerError",
    "StreamingConfig",
    "StreamingResult",
    "Transcript",
    "Unauthenticated",
    "Unavailable",
    "WordInfo",
]
