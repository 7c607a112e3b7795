"""StreamGuard, the server's one interceptor: every RPC of every service
passes through it. It ends long-lived streams with UNAVAILABLE when graceful
shutdown begins (the services know nothing about shutdown), counts requests
and open streams for StreamMetrics, logs one `rpc` record per finished call,
echoes the request metadata (docs/contract.md, "Metadata") and applies the
server-wide self-test faults (server_faults.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from typing import Any, AsyncIterator, Callable, Optional

import grpc

from polystream import server_faults

SHUTTING_DOWN = "server is shutting down"
DEADLINE_SLACK = 0.1  # seconds
# When a client cancels a call with a request stream (Chat, UploadMessages,
# SubscribeMultiple), grpcio 1.51 ends the request iterator exactly as on a
# half-close, so the handler may return normally before grpc cancels its task
# (measured: at the very next loop turn). The guard waits this long after
# such a handler returns, so the cancellation lands here and the call is
# logged CANCELLED, not OK. (A cancel that lands while a generator handler
# is still cleaning up may be swallowed there: the guard also checks the
# task's pending cancel, `Task.cancelling()`.)
CANCEL_SETTLE = 0.05  # seconds
# Request headers echoed on every RPC (docs/contract.md, "Metadata").
REQUEST_ID = "x-request-id"  # -> response headers
ECHO_TRAILER = "x-echo-trailer"  # -> trailers



_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _status_code(code: Any) -> grpc.StatusCode:
    """The context reports its final code as a StatusCode, a number or None (= OK)."""
    if isinstance(code, grpc.StatusCode):
        return code
    return _CODES_BY_NUMBER.get(code or 0, grpc.StatusCode.UNKNOWN)


@dataclasses.dataclass
class _Rpc:
    cancelled: bool = False  # the handler saw CancelledError / GeneratorExit
    finished: bool = False  # the handler ran to its end (returned, raised or aborted)


class _HandlerContext:
    """The context a service's handler gets (under the wrong-status fault's
    wrapper, server_faults.context): it echoes the request's metadata and
    applies skip-sequence to what is written; everything else is the real
    context's.

    x-request-id goes with the response headers whenever they are sent: the
    service's own send_initial_metadata (subscriptions send them once
    registered), else the first message, an abort, or the handler's end
    (grpc would otherwise send empty headers implicitly). x-echo-trailer is
    set as trailing metadata before the handler runs; grpcio's abort keeps it
    when given no trailing metadata of its own."""

    def __init__(self, ctx: grpc.aio.ServicerContext, fault: str) -> None:
        self._ctx = ctx
        self._headers: tuple[tuple[str, str], ...] = ()
        self._trailers: tuple[tuple[str, str], ...] = ()
        if server_faults.echo_metadata(fault):
            first: dict[str, str] = {}
            for key, value in ctx.invocation_metadata() or ():
                first.setdefault(key, value)  # a repeated header: its first value
            self._headers = tuple((k, first[k]) for k in (REQUEST_ID,) if k in first)
            self._trailers = tuple((k, first[k]) for k in (ECHO_TRAILER,) if k in first)
        self._sending: Optional[asyncio.Future] = None  # the response headers' send, once started
        self._skip = server_faults.sequence_skipper(fault)  # None unless skip-sequence
        if self._trailers:
            ctx.set_trailing_metadata(self._trailers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def _send_initial(self, metadata: Any) -> None:
        # Shielded: a cancel landing while grpc sends the headers (shutdown's,
        # begin_shutdown) would leave grpcio believing they were never sent;
        # an abort would then send them again and fail (ExecuteBatchError 8),
        # and the client would never get its status.
        self._sending = asyncio.ensure_future(self._ctx.send_initial_metadata(metadata))
        self._sending.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if nobody awaits
        await asyncio.shield(self._sending)

    async def send_headers(self) -> None:
        """Sends the echo headers unless headers went out already (or there is nothing to echo)."""
        if self._sending is not None or not self._headers:
            return
        try:
            await self._send_initial(self._headers)
        except (grpc.aio.AbortError, grpc.aio.UsageError):  # the call has its status already
            pass

    async def outgoing(self, message: Any) -> Any:
        """A response message on its way out (headers first)."""
        await self.send_headers()
        return self._skip(message) if self._skip is not None else message

    async def send_initial_metadata(self, metadata: Any) -> None:
        if self._sending is not None:  # a second time: grpc's UsageError
            await self._ctx.send_initial_metadata(metadata)
        await self._send_initial((*metadata, *self._headers))

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._ctx.set_trailing_metadata((*metadata, *self._trailers))

    async def write(self, message: Any) -> None:
        await self._ctx.write(await self.outgoing(message))

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> Any:
        if self._sending is not None:
            await asyncio.wait((self._sending,))  # grpc must know its headers went out (see _send_initial)
        else:
            await self.send_headers()
        if trailing_metadata:
            return await self._ctx.abort(code, details, (*trailing_metadata, *self._trailers))
        return await self._ctx.abort(code, details)  # keeps the trailers set at the start


@dataclasses.dataclass(eq=False)
class _Stream:
    """A streaming RPC whose handler is an async generator, driven by `task`."""

    task: asyncio.Task
    in_handler: bool = False  # suspended inside the service's generator, not in a grpc write
    cancelled_for_shutdown: bool = False


class StreamGuard(grpc.aio.ServerInterceptor):
    """Ends every streaming RPC with UNAVAILABLE once graceful shutdown begins
    (the services know nothing about shutdown), counts requests and open
    streams, and logs one `rpc` record per finished RPC."""

    def __init__(self, logger: logging.Logger, fault: str = "") -> None:
        self._logger = logger
        self._fault = fault  # self-test only: wrong-status rewrites messages (server_faults.py)
        self._shutdown: Optional[asyncio.Future] = None  # resolved when shutdown begins
        self._streams: set[_Stream] = set()  # open generator streams
        self.requests = 0
        self.active_streams = 0

    def stats(self) -> tuple[int, int]:
        """(requests started since start, streaming RPCs open now), for StreamMetrics."""
        return self.requests, self.active_streams

    def begin_shutdown(self) -> None:
        if self._shutdown_future().done():
            return
        self._shutdown_future().set_result(None)
        # A stream parked inside its handler (waiting on its own queue) is
        # interrupted there; one parked in a grpc write notices after it.
        for stream in self._streams:
            if stream.in_handler:
                stream.cancelled_for_shutdown = True
                stream.task.cancel()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown is not None and self._shutdown.done()

    def _shutdown_future(self) -> asyncio.Future:
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_future()
        return self._shutdown

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._client_stream(handler.stream_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._server_stream(handler.unary_stream, method, requests=False))
        return handler._replace(stream_stream=self._server_stream(handler.stream_stream, method, requests=True))

    def _contexts(self, context: grpc.aio.ServicerContext) -> tuple[_HandlerContext, Any]:
        """(the guard's own view, the handler's context): the metadata echo and
        skip-sequence, under the wrong-status self-test fault's wrapper."""
        own = _HandlerContext(context, self._fault)
        return own, server_faults.context(self._fault, own)

    def _requests(self, request_iterator: Any) -> Any:
        """The request stream the handler reads (the lose-request self-test fault's)."""
        return server_faults.requests(self._fault, request_iterator)

    def _started(self, context: grpc.aio.ServicerContext, method: str, streaming: bool) -> "_Rpc":
        self.requests += 1
        if streaming:
            self.active_streams += 1
        rpc = _Rpc()

        def finished(ctx: grpc.aio.ServicerContext) -> None:
            if streaming:
                self.active_streams -= 1
            # A handler cancelled by grpc (client cancel, deadline, lost
            # connection) leaves the context's code unset, and in grpcio 1.51
            # `ctx.cancelled()` is False here. This callback may also run
            # before the handler learns of the cancel (e.g. a stream parked in
            # a write to a client that keeps its connection but cancelled):
            # a call that ended while its handler had not finished was cancelled.
            if rpc.cancelled or not rpc.finished or ctx.cancelled():
                # The client's deadline may cancel the call a moment before the server's copy expires.
                remaining = ctx.time_remaining()
                expired = remaining is not None and remaining < DEADLINE_SLACK
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            else:
                code = _status_code(ctx.code())
            code = server_faults.logged_code(self._fault, code)  # the ignore-cancel self-test fault's claim
            self._logger.info("rpc", extra={"method": method, "code": code.name})

        context.add_done_callback(finished)
        return rpc

    def _unary(self, behavior: Callable, method: str) -> Callable:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            rpc = self._started(context, method, streaming=False)
            own, handler_context = self._contexts(context)
            try:
                result = await behavior(request, handler_context)  # unary calls finish within the grace period
            except asyncio.CancelledError:
                rpc.cancelled = True
                raise
            except BaseException:
                rpc.finished = True
                await own.send_headers()  # an error status carries the echo too
                raise
            rpc.finished = True
            await own.send_headers()
            return result

        return unary

    def _client_stream(self, behavior: Callable, method: str) -> Callable:
        async def client_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            rpc = self._started(context, method, streaming=True)
            own, handler_context = self._contexts(context)
            return await self._until_shutdown(behavior(self._requests(request_iterator), handler_context), own, rpc, settle=True)

        return client_stream

    def _server_stream(self, behavior: Callable, method: str, requests: bool) -> Callable:
        """A server-streaming (requests False) or bidi (requests True) handler."""
        if not inspect.isasyncgenfunction(behavior):  # a handler that writes with context.write

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                rpc = self._started(context, method, streaming=True)
                own, handler_context = self._contexts(context)
                request = self._requests(request) if requests else request
                return await self._until_shutdown(behavior(request, handler_context), own, rpc, settle=requests)

            return writer

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            rpc = self._started(context, method, streaming=True)
            own, handler_context = self._contexts(context)
            if self.shutting_down:
                await own.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            stream = _Stream(asyncio.current_task())
            self._streams.add(stream)
            responses = behavior(self._requests(request) if requests else request, handler_context)
            # grpc may end the call while this generator is parked at `yield`
            # (a write failed: the client cancelled or its deadline passed) and
            # then leave the generator to the garbage collector: release the
            # stream and close the service's generator as soon as the call's task ends.
            stream.task.add_done_callback(lambda task: self._abandoned(task, stream, responses, rpc))
            try:
                while True:
                    stream.in_handler = True
                    ended = False
                    try:
                        response = await responses.__anext__()
                    except StopAsyncIteration:
                        ended = True
                    except asyncio.CancelledError:
                        if not stream.cancelled_for_shutdown:
                            raise
                        stream.task.uncancel()
                        break
                    finally:
                        stream.in_handler = False
                    if ended:
                        if requests:
                            await asyncio.sleep(CANCEL_SETTLE)  # a client's cancel may be on its way: see CANCEL_SETTLE
                        if stream.task.cancelling() and not stream.cancelled_for_shutdown:
                            # grpc cancelled the call while the service's handler was finishing
                            # and the handler swallowed it (e.g. awaiting its own tasks' cleanup).
                            raise asyncio.CancelledError()
                        await own.send_headers()
                        return
                    yield await own.outgoing(response)
                    if self.shutting_down:  # it began while grpc was writing
                        break
            except (asyncio.CancelledError, GeneratorExit):
                rpc.cancelled = True
                raise
            finally:
                rpc.finished = not rpc.cancelled  # returned, raised or ends for shutdown below
                self._streams.discard(stream)
                await _close_unless_running(responses)
            await own.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

        return generator

    def _abandoned(self, task: asyncio.Task, stream: "_Stream", responses: Any, rpc: "_Rpc") -> None:
        """The call's task ended; if the generator never finished, grpc gave up
        on it (its write failed): the stream was cancelled."""
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        rpc.cancelled = True
        if not task.cancelled():
            task.exception()  # grpc's failed write to a cancelled call: expected, not "never retrieved"
        asyncio.ensure_future(_close_unless_running(responses))

    async def _until_shutdown(self, coroutine, own: _HandlerContext, rpc: "_Rpc", settle: bool) -> Any:
        """Runs a handler coroutine until it ends or shutdown begins; `settle`
        for handlers with a request stream (see CANCEL_SETTLE)."""
        if self.shutting_down:
            coroutine.close()
            await own.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        work = asyncio.ensure_future(coroutine)
        try:
            await asyncio.wait((work, self._shutdown_future()), return_when=asyncio.FIRST_COMPLETED)
            if settle and work.done() and not work.cancelled() and work.exception() is None:
                await asyncio.sleep(CANCEL_SETTLE)  # a client's cancel may be on its way
        except asyncio.CancelledError:
            rpc.cancelled = True
            raise
        finally:
            if not work.done():
                work.cancel()
                await asyncio.wait((work,))
        rpc.finished = True
        if not work.cancelled():
            if not isinstance(work.exception(), grpc.aio.AbortError):
                await own.send_headers()  # with the response, or with an error status (UNKNOWN)
            return work.result()
        await own.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


async def _close_unless_running(generator: Any) -> None:
    """Closes a service's generator unless another closer is already at it
    (grpc's finalizer of an abandoned stream and `_abandoned` may race)."""
    if generator.ag_running or generator.ag_frame is None:
        return
    await generator.aclose()
