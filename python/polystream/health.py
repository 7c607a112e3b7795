"""grpc.health.v1 for the server: SERVING while up, NOT_SERVING once
shutdown begins (Debian's grpcio ships no health module; the stubs are made
from grpc-go's descriptors, python/polystream/vendor/)."""

from __future__ import annotations

import asyncio

import grpc

from polystream.vendor import grpc_health_v1_pb2 as health_pb
from polystream.vendor import grpc_health_v1_pb2_grpc as health_grpc

class HealthService(health_grpc.HealthServicer):
    """grpc.health.v1: SERVING while up, NOT_SERVING once shutdown begins."""

    def __init__(self, service_names: tuple[str, ...]) -> None:
        self._statuses = {name: health_pb.HealthCheckResponse.SERVING for name in ("", *service_names)}
        self._watchers: set[asyncio.Queue] = set()

    def register(self, server: grpc.aio.Server) -> None:
        health_grpc.add_HealthServicer_to_server(self, server)

    def set_all(self, status: int) -> None:
        for name in self._statuses:
            self._statuses[name] = status
        for queue in self._watchers:
            queue.put_nowait(None)

    async def Check(self, request, context):
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb.HealthCheckResponse(status=status)

    async def List(self, request, context):
        response = health_pb.HealthListResponse()
        for name, status in self._statuses.items():
            response.statuses[name].status = status
        return response

    async def Watch(self, request, context):
        changed: asyncio.Queue = asyncio.Queue()
        self._watchers.add(changed)
        try:
            last = None
            while True:
                status = self._statuses.get(request.service, health_pb.HealthCheckResponse.SERVICE_UNKNOWN)
                if status != last:
                    last = status
                    yield health_pb.HealthCheckResponse(status=status)
                await changed.get()
        finally:
            self._watchers.discard(changed)
