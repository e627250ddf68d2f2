"""Health probe for containers and load balancers: exit 0 when the gRPC health service answers SERVING.

python -m server.probe --address 127.0.0.1:50051 [--service asr.v1.Recognizer] [--tls-ca ca.pem]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout: float = 3.0, tls_ca: str | None = None) -> bool:
    if tls_ca is not None:
        creds = grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None)
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    ok = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not ok:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"unhealthy: {status}", file=sys.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--tls-ca", default=None, help="use TLS; PEM CA file ('' = system roots)")
    args = p.parse_args(argv)
    return 0 if check(args.address, args.service, args.timeout, args.tls_ca) else 1


if __name__ == "__main__":
    sys.exit(main())
