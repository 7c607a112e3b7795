"""gRPC server reflection (grpc.reflection.v1 and v1alpha) over the default
descriptor pool, so `grpcurl -plaintext ADDR list|describe` works against the
Python server as against Go's. Debian's grpcio ships no grpcio-reflection,
hence this small implementation.

Both versions have the same messages; v1alpha is served by a generic handler
with the v1 classes, and its descriptor is a renamed copy of v1's so that
`describe` finds it too.
"""

from __future__ import annotations

from typing import AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool

from polystream.vendor import grpc_reflection_v1_pb2 as pb
from polystream.vendor import grpc_reflection_v1_pb2_grpc as pb_grpc

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
_V1ALPHA_FILE = "grpc/reflection/v1alpha/reflection.proto"


def _add_v1alpha_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1ALPHA_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1ALPHA_FILE
    proto.package = "grpc.reflection.v1alpha"
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(".grpc.reflection.v1.", ".grpc.reflection.v1alpha.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".grpc.reflection.v1.", ".grpc.reflection.v1alpha.")
            method.output_type = method.output_type.replace(".grpc.reflection.v1.", ".grpc.reflection.v1alpha.")
    pool.Add(proto)


class NotFound(Exception):
    pass


class ServerReflection(pb_grpc.ServerReflectionServicer):
    def __init__(self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()
        _add_v1alpha_descriptor(self._pool)
        self._service_names = sorted(set(service_names) | {V1, V1ALPHA})

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ServerReflectionServicer_to_server(self, server)
        handler = grpc.stream_stream_rpc_method_handler(
            self.ServerReflectionInfo,
            request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(V1ALPHA, {"ServerReflectionInfo": handler}),)
        )

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[pb.ServerReflectionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerReflectionResponse]:
        sent_files: set[str] = set()  # like Go: each file once per stream
        async for request in request_iterator:
            response = pb.ServerReflectionResponse(valid_host=request.host, original_request=request)
            try:
                self._answer(request, response, sent_files)
            except NotFound as exc:
                response.ClearField("file_descriptor_response")
                response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
                response.error_response.error_message = str(exc)
            yield response

    def _answer(self, request: pb.ServerReflectionRequest, response: pb.ServerReflectionResponse, sent: set[str]) -> None:
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            for name in self._service_names:
                response.list_services_response.service.add(name=name)
        elif kind == "file_by_filename":
            self._files(self._find_file(request.file_by_filename), response, sent)
        elif kind == "file_containing_symbol":
            self._files(self._file_of_symbol(request.file_containing_symbol), response, sent)
        elif kind == "file_containing_extension":
            ext = request.file_containing_extension
            try:
                message = self._pool.FindMessageTypeByName(ext.containing_type)
                extension = self._pool.FindExtensionByNumber(message, ext.extension_number)
            except KeyError:
                raise NotFound(f"extension {ext.extension_number} of {ext.containing_type} not found") from None
            self._files(extension.file, response, sent)
        elif kind == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            try:
                message = self._pool.FindMessageTypeByName(name)
            except KeyError:
                raise NotFound(f"type {name} not found") from None
            numbers = sorted(e.number for e in self._pool.FindAllExtensions(message))
            response.all_extension_numbers_response.base_type_name = name
            response.all_extension_numbers_response.extension_number.extend(numbers)
        else:
            raise NotFound("unknown reflection request")

    def _find_file(self, name: str):
        try:
            return self._pool.FindFileByName(name)
        except KeyError:
            raise NotFound(f"file {name} not found") from None

    def _file_of_symbol(self, symbol: str):
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            pass
        service, _, method = symbol.rpartition(".")  # "pkg.Service.Method"
        try:
            found = self._pool.FindServiceByName(service)
            if method in found.methods_by_name:
                return found.file
        except KeyError:
            pass
        raise NotFound(f"symbol {symbol} not found")

    @staticmethod
    def _files(file, response: pb.ServerReflectionResponse, sent: set[str]) -> None:
        """The file, then its transitive dependencies not yet sent on this stream."""
        out = response.file_descriptor_response.file_descriptor_proto
        pending = [file]
        while pending:
            current = pending.pop(0)
            if current.name in sent and current is not file:
                continue
            sent.add(current.name)
            out.append(_file_proto(current).SerializeToString())
            pending.extend(current.dependencies)


def _file_proto(file) -> descriptor_pb2.FileDescriptorProto:
    """The file's descriptor proto with every field's json_name filled in, as
    protoc (and so grpc-go's reflection) sends it: CopyToProto leaves json_name
    out, and grpcurl would then print proto names (event_id) where it prints
    JSON names (eventId) against the Go server."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pending = list(proto.message_type)
    while pending:
        message = pending.pop()
        for field in list(message.field) + list(message.extension):
            if not field.HasField("json_name"):
                field.json_name = _json_name(field.name)
        pending.extend(message.nested_type)
    for field in proto.extension:
        if not field.HasField("json_name"):
            field.json_name = _json_name(field.name)
    return proto


def _json_name(name: str) -> str:
    """protoc's rule: drop each underscore and upper-case the letter after it."""
    out, upper = [], False
    for ch in name:
        if ch == "_":
            upper = True
        else:
            out.append(ch.upper() if upper else ch)
            upper = False
    return "".join(out)
