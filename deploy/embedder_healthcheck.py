"""Container health check of the embedder: the standard grpc.health.v1 Check, exit 0 when SERVING.

Baked into the embedder image as /opt/polyhead/embedder_healthcheck.py (HEALTHCHECK, compose healthcheck).
Kubernetes uses its native `grpc:` probe against the same service instead. Stdlib + grpcio only.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port = os.environ.get("POLYHEAD_EMBEDDER_PORT", "50051")
    service = sys.argv[1] if len(sys.argv) > 1 else ""  # "" = the whole server
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    except grpc.RpcError as err:
        print(f"unhealthy: {err.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
