"""`polystream` / `python -m polystream`: the CLI of docs/cli.md.

Same commands, flags, output and exit codes as the Go CLI: one compact JSON
line per message on stdout (proto field names), human progress on stderr,
`polystream: CODE: message` and exit 1 on a gRPC error, exit 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from typing import Any, AsyncIterator, Callable, Optional, Sequence

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from polystream.chat.v1 import chat_pb2, chat_pb2_grpc
from polystream.client import ResilientSubscriber, create_channel, is_control_event
from polystream.config import parse_duration
from polystream.events.v1 import events_pb2, events_pb2_grpc
from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

DEFAULT_ADDR = "127.0.0.1:50051"
UNARY_TIMEOUT = 10.0  # seconds, when --timeout is not given

# The names of one StreamMetrics sample (docs/contract.md); --count counts samples.
METRIC_NAMES = frozenset(
    {
        "process_cpu_percent",
        "process_resident_memory_bytes",
        "process_threads",
        "server_requests_per_second",
        "server_active_streams",
    }
)

JOB_FINAL = {
    updates_pb2.JOB_STATUS_COMPLETED,
    updates_pb2.JOB_STATUS_FAILED,
    updates_pb2.JOB_STATUS_CANCELLED,
}


class CommandFailed(Exception):
    """A non-gRPC failure to report as `polystream: message` with exit 1."""


class UsageError(Exception):
    """A bad flag or argument: `polystream: message`, exit 2."""


# ---------------------------------------------------------------- output


def print_message(message: Message) -> None:
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(_like_go(message.DESCRIPTOR, as_dict), separators=(",", ":")), flush=True)


def _like_go(descriptor, value: dict) -> dict:
    """Writes a message's JSON as Go's protojson does, so both CLIs print the
    same line: map entries sorted by key, and integral doubles without ".0"
    (25, not 25.0). Fields keep their order (field number, as in Go)."""
    out = {}
    for name, item in value.items():
        field = descriptor.fields_by_name.get(name)
        sub = field.message_type if field is not None else None
        if sub is not None and sub.GetOptions().map_entry:
            entry = sub.fields_by_name["value"].message_type
            item = {k: _like_go(entry, v) if entry else _number(v) for k, v in sorted(item.items())}
        elif sub is not None and sub.full_name.startswith("google.protobuf."):
            pass  # well-known types have their own JSON forms (timestamps, Any)
        elif sub is not None:
            item = [_like_go(sub, v) for v in item] if isinstance(item, list) else _like_go(sub, item)
        else:
            item = [_number(v) for v in item] if isinstance(item, list) else _number(item)
        out[name] = item
    return out


def _number(value):
    # Go's encoding/json writes a float64 without exponent below 1e21.
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def report_error(text: str) -> None:
    print(f"polystream: {text}", file=sys.stderr, flush=True)


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def report_control_event(event: events_pb2.Event) -> None:
    """Gaps and drops are news for a person on stderr; heartbeats are routine."""
    if event.type != "heartbeat":
        metadata = " ".join(f"{k}:{v}" for k, v in sorted(event.metadata.items()))
        report_error(f"{event.type} map[{metadata}]")


def report_reconnect(error: BaseException, attempt: int, delay: Optional[float]) -> None:
    if delay is not None:
        report_error(f"reconnecting in {delay:.3f}s (attempt {attempt}): {describe(error)}")


def progress_bar(progress: updates_pb2.JobProgress, width: int = 30) -> str:
    filled = int(width * min(max(progress.percentage, 0.0), 100.0) / 100)
    status = updates_pb2.JobStatus.Name(progress.status).removeprefix("JOB_STATUS_")
    return f"[{'#' * filled}{'-' * (width - filled)}] {progress.percentage:5.1f}% {status} {progress.current_step}"


# ---------------------------------------------------------------- flag types


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def key_values(text: str) -> dict[str, str]:
    pairs = {}
    for item in comma_list(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f'expected k=v[,k2=v2], got "{text}"')
        pairs[key] = value
    return pairs


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---------------------------------------------------------------- helpers


class Connection:
    """The channel and stubs a command talks through."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.channel = create_channel(args.addr)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.updates = updates_pb2_grpc.StreamServiceStub(self.channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.stream_timeout: Optional[float] = args.timeout
        self.unary_timeout: float = args.timeout if args.timeout is not None else UNARY_TIMEOUT


async def print_stream(call: Any, count: int, counts: Callable[[Any], bool] = lambda _: True) -> None:
    """Prints a server stream; ends after `count` counted messages (0 = no limit)."""
    seen = 0
    try:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            print_message(message)
            if counts(message):
                seen += 1
                if count and seen >= count:
                    return
    finally:
        call.cancel()


async def stdin_lines() -> AsyncIterator[str]:
    """stdin's lines without their line ends, read by a daemon thread so a
    command can finish while stdin is still open."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Optional[str]] = asyncio.Queue(maxsize=64)

    def pump() -> None:
        try:
            for line in sys.stdin:
                asyncio.run_coroutine_threadsafe(queue.put(line.rstrip("\r\n")), loop).result()
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
        except RuntimeError:  # the loop is gone: the command already ended
            pass

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line


# ---------------------------------------------------------------- commands


async def cmd_subscribe(conn: Connection, args: argparse.Namespace) -> int:
    request = dict(
        client_id=args.client_id,
        event_types=args.types,
        channel=args.channel,
        last_event_id=args.last_event_id,
    )
    if args.raw:
        call = conn.events.Subscribe(
            events_pb2.SubscribeRequest(heartbeat_interval=args.heartbeat, **request),
            timeout=conn.stream_timeout,
        )
        await print_stream(call, args.count, counts=lambda event: not is_control_event(event))
        return 0
    # The subscriber makes its own channel from the address: one whose
    # reconnect timer follows the subscriber's backoff, not grpc's (up to 120 s).
    subscriber = ResilientSubscriber(
        args.addr,
        heartbeat_interval=args.heartbeat,
        include_control_events=True,
        on_disconnect=report_reconnect,
        **request,
    )

    async def print_events() -> None:
        seen = 0
        events = subscriber.events()
        try:
            async for event in events:
                if is_control_event(event):
                    report_control_event(event)
                    continue
                print_message(event)
                seen += 1
                if args.count and seen >= args.count:
                    return
        finally:
            await events.aclose()

    async with subscriber:
        try:
            # --timeout bounds the whole subscription, reconnections included
            async with asyncio.timeout(conn.stream_timeout):  # not wait_for, which can swallow Ctrl-C
                await print_events()
        except TimeoutError:
            raise CommandFailed("DEADLINE_EXCEEDED: Deadline Exceeded") from None
    return 0


async def cmd_publish(conn: Connection, args: argparse.Namespace) -> int:
    event = events_pb2.Event(id=args.id, type=args.type, data=args.data, metadata=args.metadata)
    request = events_pb2.BroadcastRequest(event=event, target_channels=args.channels)
    print_message(await conn.events.Broadcast(request, timeout=conn.unary_timeout))
    return 0


async def cmd_status(conn: Connection, args: argparse.Namespace) -> int:
    request = events_pb2.SubscribeRequest(client_id=args.client_id)
    print_message(await conn.events.GetConnectionStatus(request, timeout=conn.unary_timeout))
    return 0


async def cmd_updates(conn: Connection, args: argparse.Namespace) -> int:
    request = updates_pb2.SubscribeRequest(topics=args.topics, client_id=args.client_id)
    await print_stream(conn.updates.SubscribeToUpdates(request, timeout=conn.stream_timeout), args.count)
    return 0


async def cmd_publish_update(conn: Connection, args: argparse.Namespace) -> int:
    request = updates_pb2.PublishUpdateRequest(topic=args.topic, message=args.message, metadata=args.metadata)
    print_message(await conn.updates.PublishUpdate(request, timeout=conn.unary_timeout))
    return 0


async def cmd_query(conn: Connection, args: argparse.Namespace) -> int:
    request = updates_pb2.QueryRequest(query=args.sql, batch_size=args.batch_size)
    await print_stream(conn.updates.StreamQueryResults(request, timeout=conn.stream_timeout), 0)
    return 0


def start_job_request(args: argparse.Namespace) -> updates_pb2.StartJobRequest:
    return updates_pb2.StartJobRequest(
        name=args.name, steps=args.steps, step_duration_ms=args.step_ms, fail_at_step=args.fail_at
    )


async def cmd_start_job(conn: Connection, args: argparse.Namespace) -> int:
    print_message(await conn.updates.StartJob(start_job_request(args), timeout=conn.unary_timeout))
    return 0


async def cmd_cancel_job(conn: Connection, args: argparse.Namespace) -> int:
    request = updates_pb2.CancelJobRequest(job_id=args.job_id)
    print_message(await conn.updates.CancelJob(request, timeout=conn.unary_timeout))
    return 0


async def cmd_watch_job(conn: Connection, args: argparse.Namespace) -> int:
    job_id = args.job_id
    if args.start:
        started = await conn.updates.StartJob(start_job_request(args), timeout=conn.unary_timeout)
        job_id = started.job_id
    call = conn.updates.WatchJobProgress(updates_pb2.JobRequest(job_id=job_id), timeout=conn.stream_timeout)
    last: Optional[updates_pb2.JobProgress] = None
    # A terminal gets one bar redrawn in place; a log file gets a line per update.
    redraw = sys.stderr.isatty()
    try:
        async for progress in call:
            print_message(progress)
            bar = progress_bar(progress)
            print(f"\r{bar}" if redraw else bar, end="" if redraw else "\n", file=sys.stderr, flush=True)
            last = progress
    finally:
        if redraw and last is not None:
            print(file=sys.stderr, flush=True)
    if last is not None and last.status == updates_pb2.JOB_STATUS_COMPLETED:
        return 0
    status = updates_pb2.JobStatus.Name(last.status) if last is not None else "no progress"
    raise CommandFailed(f"job {job_id} ended {status}")


async def cmd_tail(conn: Connection, args: argparse.Namespace) -> int:
    request = updates_pb2.LogRequest(
        service_name=args.service, log_level=args.level, lines=args.lines, follow=args.follow
    )
    await print_stream(conn.updates.TailLogs(request, timeout=conn.stream_timeout), args.count)
    return 0


async def cmd_send(conn: Connection, args: argparse.Namespace) -> int:
    request = chat_pb2.SendMessageRequest(user=args.user, room=args.room, content=args.content)
    print_message(await conn.chat.SendMessage(request, timeout=conn.unary_timeout))
    return 0


async def cmd_messages(conn: Connection, args: argparse.Namespace) -> int:
    request = chat_pb2.SubscribeRequest(room=args.room, user=args.user)
    await print_stream(conn.chat.SubscribeMessages(request, timeout=conn.stream_timeout), args.count)
    return 0


def chat_message(args: argparse.Namespace, content: str) -> chat_pb2.Message:
    return chat_pb2.Message(user=args.user, room=args.room, content=content, type=chat_pb2.MESSAGE_TYPE_CHAT)


async def cmd_chat(conn: Connection, args: argparse.Namespace) -> int:
    call = conn.chat.Chat(timeout=conn.stream_timeout)

    async def send_stdin() -> None:
        async for line in stdin_lines():
            await call.write(chat_message(args, line))
        await call.done_writing()  # half-close: the server ends the stream

    sender = asyncio.create_task(send_stdin())
    try:
        await print_stream(call, 0)
        if sender.done() and not sender.cancelled() and sender.exception() is not None:
            # A write failed for a reason the stream's status did not already tell.
            raise sender.exception()  # type: ignore[misc]
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return 0


async def cmd_upload(conn: Connection, args: argparse.Namespace) -> int:
    async def messages() -> AsyncIterator[chat_pb2.Message]:
        if args.count:
            for n in range(1, args.count + 1):
                yield chat_message(args, f"message {n}")
        else:
            async for line in stdin_lines():
                yield chat_message(args, line)

    print_message(await conn.chat.UploadMessages(messages(), timeout=conn.stream_timeout))
    return 0


async def cmd_metrics(conn: Connection, args: argparse.Namespace) -> int:
    request = chat_pb2.MetricsRequest(instance_id=args.instance_id, interval_seconds=args.interval)
    call = conn.chat.StreamMetrics(request, timeout=conn.stream_timeout)
    # A sample is one burst of METRIC_NAMES; it is complete once all have come.
    samples, in_sample = 0, set()
    try:
        async for metric in call:
            print_message(metric)
            if metric.name in in_sample:  # a new burst began before the last was complete
                samples, in_sample = samples + 1, set()
            in_sample.add(metric.name)
            if METRIC_NAMES <= in_sample:
                samples, in_sample = samples + 1, set()
            if args.count and samples >= args.count:
                break
    finally:
        call.cancel()
    return 0


# ---------------------------------------------------------------- parser


class FlagParser(argparse.ArgumentParser):
    """argparse with the Go CLI's error line (`polystream: COMMAND: what`); exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("polystream").strip()
        raise UsageError(f"{command}: {message}" if command else message)


# Flags that must be given and not empty, as in the Go CLI.
REQUIRED_FLAGS = {"subscribe": ("client_id",), "publish": ("type",)}


def check_args(args: argparse.Namespace) -> None:
    for field in REQUIRED_FLAGS.get(args.command, ()):
        if not getattr(args, field):
            raise UsageError(f"{args.command}: --{field.replace('_', '-')} is required")


COMMANDS = (
    "serve subscribe publish status updates publish-update query start-job cancel-job watch-job "
    "tail send messages chat upload metrics"
).split()


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="polystream", description="polystream gRPC streaming CLI (docs/cli.md)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=FlagParser)
    commands.required = True
    commands.add_parser("serve", help="run the server (flags: docs/contract.md)", add_help=False)

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--addr", default=os.environ.get("POLYSTREAM_ADDR", DEFAULT_ADDR), help="server HOST:PORT")
        sub.add_argument("--timeout", type=duration, default=None, help="overall deadline, e.g. 5s")
        return sub

    def count_flag(sub: argparse.ArgumentParser, what: str = "messages") -> None:
        sub.add_argument("--count", type=int, default=0, help=f"exit 0 after N {what} (0 = no limit)")

    sub = command("subscribe", cmd_subscribe, "EventService.Subscribe through the resilient client")
    sub.add_argument("--client-id", default="", help="client id (required)")
    sub.add_argument("--types", type=comma_list, default=[], help="type patterns, e.g. a.*,b")
    sub.add_argument("--channel", default="")
    sub.add_argument("--last-event-id", default="")
    sub.add_argument("--heartbeat", type=int, default=0, metavar="SECONDS")
    count_flag(sub, "log events")
    sub.add_argument("--raw", action="store_true", help="one plain Subscribe call: no retry, control events too")

    sub = command("publish", cmd_publish, "EventService.Broadcast")
    sub.add_argument("--type", default="", help="event type, e.g. user.created (required)")
    sub.add_argument("--data", default="", metavar="JSON")
    sub.add_argument("--id", default="")
    sub.add_argument("--channels", type=comma_list, default=[])
    sub.add_argument("--metadata", type=key_values, default={}, metavar="k=v,k2=v2")

    sub = command("status", cmd_status, "EventService.GetConnectionStatus")
    sub.add_argument("--client-id", default="")

    sub = command("updates", cmd_updates, "StreamService.SubscribeToUpdates")
    sub.add_argument("--topics", type=comma_list, default=[])
    sub.add_argument("--client-id", default="")
    count_flag(sub)

    sub = command("publish-update", cmd_publish_update, "StreamService.PublishUpdate")
    sub.add_argument("--topic", default="")
    sub.add_argument("--message", default="")
    sub.add_argument("--metadata", type=key_values, default={}, metavar="k=v,k2=v2")

    sub = command("query", cmd_query, "StreamService.StreamQueryResults")
    sub.add_argument("--sql", default="")
    sub.add_argument("--batch-size", type=int, default=0)

    def job_flags(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--name", default="")
        sub.add_argument("--steps", type=int, default=0)
        sub.add_argument("--step-ms", type=int, default=0)
        sub.add_argument("--fail-at", type=int, default=0)

    job_flags(command("start-job", cmd_start_job, "StreamService.StartJob"))

    sub = command("cancel-job", cmd_cancel_job, "StreamService.CancelJob")
    sub.add_argument("--job-id", default="")

    sub = command("watch-job", cmd_watch_job, "StreamService.WatchJobProgress, progress bar on stderr")
    sub.add_argument("--job-id", default="")
    sub.add_argument("--start", action="store_true", help="start a job first (with the start-job flags)")
    job_flags(sub)

    sub = command("tail", cmd_tail, "StreamService.TailLogs")
    sub.add_argument("--service", default="")
    sub.add_argument("--level", default="")
    sub.add_argument("--lines", type=int, default=0)
    sub.add_argument("--follow", action="store_true")
    count_flag(sub)

    sub = command("send", cmd_send, "ChatService.SendMessage")
    sub.add_argument("--user", default="")
    sub.add_argument("--room", default="")
    sub.add_argument("--content", default="")

    sub = command("messages", cmd_messages, "ChatService.SubscribeMessages")
    sub.add_argument("--user", default="")
    sub.add_argument("--room", default="")
    count_flag(sub)

    sub = command("chat", cmd_chat, "ChatService.Chat: stdin lines in, every message out")
    sub.add_argument("--user", default="")
    sub.add_argument("--room", default="")

    sub = command("upload", cmd_upload, "ChatService.UploadMessages: one message per stdin line")
    sub.add_argument("--user", default="")
    sub.add_argument("--room", default="")
    sub.add_argument("--count", type=int, default=0, help="send N generated messages instead of stdin")

    sub = command("metrics", cmd_metrics, "ChatService.StreamMetrics")
    sub.add_argument("--instance-id", default="")
    sub.add_argument("--interval", type=int, default=0, metavar="SECONDS")
    count_flag(sub, "samples")
    return parser


async def run_command(args: argparse.Namespace) -> int:
    conn = Connection(args)
    try:
        return await args.handler(conn, args)
    finally:
        await conn.channel.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        from polystream import server  # lazily: client commands need no server code

        return server.main(argv[1:]) or 0
    parser = build_parser()
    try:
        if not argv:
            parser.print_help(sys.stderr)
            return 2
        if not argv[0].startswith("-") and argv[0] not in COMMANDS:
            raise UsageError(f'unknown command "{argv[0]}" (see polystream --help)')
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            raise UsageError(f"{args.command}: unrecognized arguments: {' '.join(unknown)}")
        check_args(args)
    except UsageError as exc:
        report_error(str(exc))
        return 2
    # As the Go CLI (signal.NotifyContext): Ctrl-C ends a command even when
    # the process inherited SIGINT ignored (started with `&` by a shell
    # without job control, as CI runners do).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(run_command(args))
    except grpc.aio.AioRpcError as exc:
        report_error(describe(exc))
        return 1
    except CommandFailed as exc:
        report_error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); that is how such pipelines end.
        sys.stdout = open(os.devnull, "w")
        return 0
