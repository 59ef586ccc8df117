"""The ``voicerelay`` command line. Each command imports what it needs when it runs, so that
``voicerelay --help`` loads no audio, network or numeric library.

Errors reach the user in one place, :func:`main`: a :class:`~voicerelay.errors.VoiceRelayError`
(or a usage mistake that click found, such as ``--speed abc``) becomes one line on stderr and
its exit code; Ctrl-C exits 130.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

from .errors import EXIT_INTERRUPTED, UsageError, VoiceRelayError

class _FlagsShownAsFlags:
    """Help that shows a flag (``--compare``, ``--help``) without a ``<bool>`` as if it took a value."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_FlagsShownAsFlags, TyperCommand):
    pass


class _Group(_FlagsShownAsFlags, TyperGroup):
    pass


app = typer.Typer(
    name="voicerelay",
    cls=_Group,
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
command = app.command(cls=_Command)


def fail(message: str) -> NoReturn:
    """Unusable options or input: one line, exit 2."""
    raise UsageError(message)


def _setup_logging(level: str, handler: logging.Handler | None = None) -> None:
    """Logs go to stderr (stdout carries transcripts and `--json -` reports), or to ``handler``."""
    from .console import log_handler

    if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level must be debug, info, warning or error, not {level!r}")
    if handler is None:
        handler = log_handler()
    handler.addFilter(_redact_secrets)
    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]", handlers=[handler])
    # websockets' DEBUG logs every frame (whole base64 audio) and the handshake headers; our own
    # debug lines show events with audio elided
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))


def _redact_secrets(record: logging.LogRecord) -> bool:
    """A log filter: no API key or bearer token reaches a log line, whichever library wrote it."""
    from .protocol.redact import redact_secrets

    message = record.getMessage()
    redacted = redact_secrets(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    return True


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"voicerelay {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """A voice relay and debugger for speech-to-speech AI on the OpenAI Realtime protocol.

    Without OPENAI_API_KEY every command runs against the embedded offline backend.
    """


LogLevel = Annotated[str, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error.",
                                       show_default=True)]
Host = Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on.")]
Port = Annotated[int, typer.Option(metavar="PORT", help="Port to listen on (0 picks a free one).", min=0, max=65535)]



@command
def backend(
    host: Host = "127.0.0.1",
    port: Port = 8765,
    pace: Annotated[float, typer.Option(metavar="FACTOR",
        help="Stream reply audio at this many times real time (0 = as fast as possible).", min=0)] = 10.0,
    max_session_seconds: Annotated[float, typer.Option(metavar="SECONDS",
        help="End each session with [bold]session_expired[/] after this long, like OpenAI's 60-minute cap.",
        min=1)] = 3600.0,
    log_level: LogLevel = "info",
) -> None:
    """Run the embedded offline Realtime server (VAD, speech-to-text, a responder, text-to-speech).

    It speaks the OpenAI Realtime protocol at [bold]ws://HOST:PORT/v1/realtime[/]: GA by default, beta when the client sends [bold]OpenAI-Beta: realtime=v1[/]. Any Realtime client works, the official openai SDK included ([italic]websocket_base_url="ws://HOST:PORT/v1"[/]).

    Exit codes: 0 stopped (Ctrl-C or SIGTERM); 2 unusable options or a port that cannot be listened on.
    """
    import asyncio

    from .console import console as make_console

    from .backend.server import run

    _setup_logging(log_level)
    console = make_console(stderr=True)

    def ready(server: object) -> None:
        console.print(f"[bold green]Embedded Realtime backend[/] on [cyan]{server.url}[/]  "  # type: ignore[attr-defined]
                      "(GA; beta with [bold]OpenAI-Beta: realtime=v1[/]). Ctrl-C stops it.")

    try:
        asyncio.run(run(host, port, pace, max_session_seconds, ready))
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("stopped.")


@command
def proxy(
    host: Host = "127.0.0.1",
    port: Port = 8766,
    backend: Annotated[str | None, typer.Option(metavar="BACKEND",
        help="Where to forward: embedded, openai, or a ws:// or wss:// URL. Default: openai when OPENAI_API_KEY is "
             "set, else embedded. The proxy adds OPENAI_API_KEY upstream itself: apps may hold a placeholder key.",
        show_default=False)] = None,
    record: Annotated[Path | None, typer.Option(metavar="DIR",
        help="Record every session into a folder of its own under DIR (replay it with voicerelay replay).",
        show_default=False)] = None,
    token: Annotated[str | None, typer.Option(metavar="TOKEN", envvar="VOICERELAY_TOKEN",
        help="Require 'Authorization: Bearer TOKEN' from clients (the openai SDK's api_key). Needed to listen on "
             "an address other than loopback.", show_default=False)] = None,
    allow_origin: Annotated[list[str] | None, typer.Option(metavar="ORIGIN",
        help="Browser origins allowed to connect (repeatable; '*' any). Default: none (clients that send no Origin, "
             "such as SDKs, are not affected).", show_default=False)] = None,
    max_sessions: Annotated[int, typer.Option(metavar="N", help="Concurrent sessions at most (more get HTTP 503).",
                                              min=1)] = 100,
    lint: Annotated[bool, typer.Option("--lint/--no-lint", help=(
        "Check every session live against the protocol rules of [bold]voicerelay lint[/]: each finding is one "
        "warning line as soon as it is known, and shows in [bold]voicerelay inspect[/]."))] = True,
    monitor: Annotated[bool, typer.Option("--monitor/--no-monitor", help=(
        "Show every session to [bold]voicerelay inspect http://HOST:MONITOR_PORT[/] (state, transcripts, "
        "latency, lint findings, cost); monitors give --token when the proxy requires one."))] = True,
    monitor_port: Annotated[int, typer.Option(metavar="PORT", min=0, max=65535,
        help="Port of the monitor that inspect connects to (0 picks a free one).")] = 8767,
    log_level: LogLevel = "info",
) -> None:
    """Put voicerelay between any Realtime app and its server: every event forwarded unchanged, and recorded.

    Listens at [bold]ws://HOST:PORT/v1/realtime[/] (OpenAI's path and query; the GA and beta [bold]OpenAI-Beta[/] headers pass through). An app switches by changing only its base URL ([italic]websocket_base_url="ws://HOST:PORT/v1"[/] in the openai SDK). Messages are forwarded byte for byte and in order; when either side closes, the other is closed with the same code.

    Exit codes: 0 stopped (Ctrl-C or SIGTERM); 1 the embedded backend or the proxy failed to start; 2 unusable options (a non-loopback --host without --token, --backend openai without OPENAI_API_KEY) or a port that cannot be listened on.
    """
    import asyncio

    from .console import console as make_console
    from .proxy.rules import check_listen
    from .proxy.server import run

    _setup_logging(log_level)
    _backend(backend)
    problem = check_listen(host, token)
    if problem is not None:
        fail(problem)
    sock = _listening_socket(host, port)
    try:
        monitor_sock = _listening_socket(host, monitor_port) if monitor else None
    except BaseException:
        sock.close()
        raise
    console = make_console(stderr=True)

    def ready(server: Any) -> None:
        console.print(f"[bold green]voicerelay proxy[/] on [cyan]{server.url}[/] → {server.label}"
                      f"{'  (recording into ' + str(record) + ')' if record else ''}. "
                      f"Point apps at [bold]websocket_base_url=\"{server.base_url}\"[/]. Ctrl-C stops it.")
        if monitor_sock is not None:
            mhost, mport = monitor_sock.getsockname()[:2]
            where = f"[{mhost}]" if ":" in mhost else mhost
            console.print(f"Watch its sessions: [bold]voicerelay inspect http://{where}:{mport}[/]")

    try:
        asyncio.run(run(backend=backend, host=host, port=sock.getsockname()[1], token=token,
                        allow_origins=allow_origin or [], max_sessions=max_sessions,
                        record=str(record) if record is not None else None, sock=sock, ready=ready,
                        lint=lint, monitor_sock=monitor_sock))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("stopped.")
    finally:
        sock.close()
        if monitor_sock is not None:
            monitor_sock.close()


def _cannot_listen(host: str, port: int, exc: OSError) -> VoiceRelayError:
    """The same words for every server command: ``cannot listen on HOST:PORT: reason``."""
    from .errors import ListenError

    reason = (exc.strerror or str(exc)).lower()
    hint = " (pick another --port)" if getattr(exc, "errno", None) == 98 else ""
    return ListenError(f"cannot listen on {host}:{port}: {reason}{hint}")


def _listening_socket(host: str, port: int) -> Any:
    """Bind before anything is announced, so a busy port is one line and nothing else."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise _cannot_listen(host, port, exc) from None
    sock.set_inheritable(True)
    return sock


Backend = Annotated[str | None, typer.Option(metavar="BACKEND",
    help="embedded, openai, or a ws:// or wss:// URL. Default: openai when OPENAI_API_KEY is set, else embedded.",
    show_default=False)]
DialectOpt = Annotated[str, typer.Option("--dialect", metavar="ga|beta", help="Event names to send: ga or beta.")]
Model = Annotated[str, typer.Option(metavar="NAME", help="Realtime model.")]
Voice = Annotated[str, typer.Option(metavar="NAME", help="Assistant voice.")]
Instructions = Annotated[str | None, typer.Option(metavar="TEXT", help="System instructions for the assistant.", show_default=False)]
TurnDetection = Annotated[str, typer.Option(
    "--turn-detection", metavar="MODE", help="normal or aggressive (server VAD), or disabled (commit at the end of the input).")]


def _config(model: str, voice: str, instructions: str | None, turn_detection: str) -> object:
    from .protocol.config import ConfigError, RealtimeConfig

    values: dict[str, object] = {"model": model, "voice": voice, "turn_detection_mode": turn_detection}
    if instructions is not None:
        values["instructions"] = instructions
    try:
        return RealtimeConfig.from_mapping(values)
    except ConfigError as exc:
        fail(str(exc))


def _backend(value: str | None) -> None:
    """--backend is embedded, openai or a ws(s):// URL (what choose_backend accepts), else exit 2."""
    from .upstream import choose_backend

    try:
        choose_backend(value)
    except ValueError as exc:
        fail(str(exc))


def _dialect(value: str) -> object:
    from .protocol.events import Dialect

    try:
        return Dialect(value.lower())
    except ValueError:
        fail(f"--dialect must be ga or beta, not {value!r}")


@command
def replay(
    paths: Annotated[list[Path], typer.Argument(
        metavar="PATH...", show_default=False,
        help="WAVs (any rate, channels, sample format) or recorded session folders; a quoted glob ('tests/*.wav') "
             "is expanded. Several are replayed --jobs at a time, then summed up in one table.")],
    speed: Annotated[float, typer.Option(metavar="FACTOR", help=(
        "Pacing: 1 = real time, or any factor. 0 = as fast as the upstream takes it, one utterance at a time: "
        "each is sent once the previous one is answered, so every utterance gets its own reply."), min=0)] = 1.0,
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="Write the assistant's audio to this WAV.",
                                             show_default=False)] = None,
    json_path: Annotated[str | None, typer.Option("--json", metavar="FILE", help="Write a JSON report to FILE ('-' for stdout).",
                                                  show_default=False)] = None,
    expect: Annotated[str | None, typer.Option(metavar="REGEX",
        help="Exit 1 unless this regular expression matches a user or assistant transcript.",
        show_default=False)] = None,
    record: Annotated[Path | None, typer.Option(metavar="DIR", help="Record the session into this new folder.",
                                                show_default=False)] = None,
    vary: Annotated[list[str] | None, typer.Option(metavar="KEY=V1,V2", help=(
        "A/B replay: replay the input under every combination of these settings (repeatable: turn_detection, "
        "silence_duration_ms, prefix_padding_ms, threshold, voice, instructions, ...), --jobs at a time, and print "
        "one table: turns, interruptions, first-audio latency, transcripts that differ, lint findings, cost."),
        show_default=False)] = None,
    compare: Annotated[bool, typer.Option(
        "--compare", help="With a recorded session: show how the new transcripts differ from the recorded ones.")
    ] = False,
    jobs: Annotated[int | None, typer.Option(metavar="N", min=1, show_default=False, help=(
        "Inputs (or --vary variants) replayed at once, each in a worker process with its own session and "
        "backend; each file's output is printed as one block, in input order. Default: one per core, at most one "
        "per input. 1: one after the other in this process."))] = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds that any wait may take: the session's set-up, each reply, the last one after the input ends.",
                                           min=0.1)] = 30.0,
    backend: Backend = None,
    dialect: DialectOpt = "ga",
    model: Model = "gpt-realtime",
    voice: Voice = "alloy",
    instructions: Instructions = None,
    turn_detection: TurnDetection = "normal",
    log_level: LogLevel = "warning",
) -> None:
    """Push a WAV file or a recorded session through the pipeline and print the conversation.

    Prints each user and assistant line with its latency.

    Exit codes: 0 every turn answered; 1 the upstream failed or did not answer within --timeout, --expect matched nothing, --compare found differences, or a worker process died (--jobs); 2 unusable input or options; 130 interrupted (the --json report holds what finished).
    """
    import asyncio

    from .console import console as make_console

    from .replay import ReplayOptions
    from .replay import replay_all

    _setup_logging(log_level)
    _backend(backend)
    options = ReplayOptions(path=Path(), config=_config(model, voice, instructions, turn_detection),  # type: ignore[arg-type]
                            backend=backend, dialect=_dialect(dialect), speed=speed, out=out,  # type: ignore[arg-type]
                            json_path=json_path, expect=expect, record=record, compare=compare, timeout=timeout)
    console = make_console(stderr=json_path == "-")
    err = make_console(stderr=True)
    inputs = _expand_globs(paths)
    if vary:
        if len(inputs) != 1:
            fail(f"--vary replays one input, not {len(inputs)}")
        from .variants import replay_variants

        raise typer.Exit(asyncio.run(replay_variants(inputs[0], vary, options, console, err, jobs)))
    raise typer.Exit(asyncio.run(replay_all(inputs, options, console, err, jobs)))


def _expand_globs(paths: list[Path]) -> list[Path]:
    """Paths as given, a pattern that names no file expanded (a shell that did not, or a quoted one)."""
    import glob

    expanded: list[Path] = []
    for path in paths:
        text = str(path)
        if not path.exists() and glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                fail(f"no file matches {text}")
            expanded += [Path(m) for m in matches]
        else:
            expanded.append(path)
    return expanded


def _load_toml(path: Path) -> dict[str, object]:
    import tomllib

    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        fail(f"--config {path}: no such file")
    except (tomllib.TOMLDecodeError, OSError) as exc:
        fail(f"--config {path}: {exc}")


@command
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    config_file: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", help="A TOML file of ragent's configuration keys (voice, model, instructions, "
        "turn_detection_mode, turn_detection_params, transcription_model, max_output_tokens, tools).",
        show_default=False)] = None,
    agent: Annotated[str | None, typer.Option(metavar="MODULE:FUNCTION",
        help="Agent-wrapper mode: module:function called as on_transcript(session_id, transcript, chat_payload, "
        "event_emitter, TTS). Modules of --agent, --tools and --functions are imported from the current directory "
        "first, as uvicorn does.", show_default=False)] = None,
    tools: Annotated[str | None, typer.Option(metavar="MODULE:NAME", help="Function-calling mode: module:TOOLS, a list of function "
                                              "schemas.", show_default=False)] = None,
    functions: Annotated[str | None, typer.Option(metavar="MODULE:NAME", help="Function-calling mode: module:FUNCTION_MAP, tool name -> "
                                                  "callable.", show_default=False)] = None,
    allow_origin: Annotated[list[str] | None, typer.Option(metavar="ORIGIN",
        help="Origins allowed to connect (repeatable). Default: the gateway's own origin. '*' allows any page.",
        show_default=False)] = None,
    token: Annotated[str | None, typer.Option(metavar="TOKEN", envvar="VOICERELAY_TOKEN", help="Require this token in the "
                                              "Socket.IO auth payload ({token: ...}).", show_default=False)] = None,
    max_sessions: Annotated[int, typer.Option(metavar="N", help="Concurrent browser sessions at most.", min=1)] = 100,
    max_session_seconds: Annotated[float, typer.Option(metavar="SECONDS", help="A session ends after this long.", min=1)] = 3600.0,
    max_chunk: Annotated[int, typer.Option("--max-chunk", metavar="CHARS", help="Largest audio_data chunk, in base64 "
                                           "characters (over it: error chunk_too_large). No message may exceed 8 MiB "
                                           "(or twice this): the transport closes the connection (WebSocket 1009).",
                                           min=64)] = 65536,
    record: Annotated[Path | None, typer.Option(metavar="DIR", help="Record each session into a folder under this one.",
                                                show_default=False)] = None,
    admin_token: Annotated[str | None, typer.Option(metavar="TOKEN",
        envvar="VOICERELAY_ADMIN_TOKEN", help="Require this token from monitors (voicerelay inspect) on /monitor.",
        show_default=False)] = None,
    redis: Annotated[str | None, typer.Option(metavar="URL",
        help="Run as one node of several sharing this Redis (redis://host:port/db): sessions and actions "
        "reach across nodes. Checked at start-up: if it cannot be reached, serve says so in one line and starts "
        "degraded (/health says so) until it can.", show_default=False)] = None,
    node_id: Annotated[str | None, typer.Option(metavar="NAME", help="This node's name in the cluster (default: random).",
                                                show_default=False)] = None,
    lint: Annotated[bool, typer.Option("--lint/--no-lint", help=(
        "Check every session's Realtime events live against the rules of [bold]voicerelay lint[/] (a browser "
        "sending audio at the wrong rate, ...): each finding is one warning line and shows in "
        "[bold]voicerelay inspect[/]."))] = True,
    backend: Backend = None,
    dialect: DialectOpt = "ga",
    model: Model = "gpt-realtime",
    voice: Voice = "alloy",
    instructions: Instructions = None,
    turn_detection: TurnDetection = "normal",
    log_level: LogLevel = "info",
) -> None:
    """Serve the pipeline to browsers: a Socket.IO gateway (ragent's event contract) with a demo page.

    GET / is the demo page, GET /health the gateway's status, GET /session-config the public session settings. The API key stays on the server. The demo page needs npm's socket.io-client (npm install): without it serve and the page say so, and it is found once installed, without a restart.

    With --redis, a Redis that cannot be reached is one line and the node starts degraded (/health says "degraded" until Redis answers and this node's sessions are registered); it recovers by itself.

    Exit codes: 0 stopped (Ctrl-C or SIGTERM, every session ended first); 1 the gateway failed to start; 2 unusable options or a port that cannot be listened on. An unreachable --redis is not an exit: the node starts degraded.
    """
    import asyncio

    from .console import console as make_console

    from .gateway.agent import GatewayConfigError, load_object
    from .protocol.config import ConfigError, RealtimeConfig

    _setup_logging(log_level)
    _backend(backend)
    base = _config(model, voice, instructions, turn_detection)
    if config_file is not None:
        try:
            base = RealtimeConfig.from_mapping(_load_toml(config_file), base)  # type: ignore[arg-type]
        except ConfigError as exc:
            fail(f"--config {config_file}: {exc}")
    if (agent or tools or functions) and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the user's own modules, as uvicorn finds them
    try:
        on_transcript = load_object(agent) if agent else None
        tool_list = load_object(tools) if tools else None
        function_map = load_object(functions) if functions else None
        from .gateway.server import Gateway

        gateway = Gateway(backend=backend, dialect=_dialect(dialect), config=base,  # type: ignore[arg-type]
                          on_transcript=on_transcript, tools=tool_list, function_map=function_map,
                          allow_origins=allow_origin or None, token=token, max_sessions=max_sessions,
                          max_session_seconds=max_session_seconds, max_chunk_b64=max_chunk, record_dir=record,
                          admin_token=admin_token, redis_url=redis, node_id=node_id, lint=lint)
    except (GatewayConfigError, ConfigError) as exc:
        fail(str(exc))

    import uvicorn

    sock = _listening_socket(host, port)
    port = sock.getsockname()[1]
    console = make_console(stderr=True)
    console.print(f"[bold green]voicerelay gateway[/] on [cyan]http://{host}:{port}/[/]  "
                  f"(upstream: {gateway.backend}; /health, /session-config). Ctrl-C stops it.")
    server = _GracefulServer(gateway, uvicorn.Config(gateway.asgi_app(), host=host, port=port,
                                                     log_level=log_level.lower(), lifespan="on",
                                                     **gateway.uvicorn_options()))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    if not server.started:
        raise VoiceRelayError(f"the gateway on {host}:{port} did not start (see the log above)")


def _GracefulServer(gateway: Any, config: Any) -> Any:  # noqa: N802 - a class made on demand (lazy uvicorn)
    """A uvicorn server that, on Ctrl-C or SIGTERM, first ends every session (browsers get
    ``session_ended {status: "shutdown"}``), then stops as uvicorn does. A second Ctrl-C forces."""
    import asyncio

    import uvicorn

    class GracefulServer(uvicorn.Server):
        ending: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.ending is not None or self.should_exit:
                super().handle_exit(sig, frame)  # again: stop now (a third Ctrl-C forces), as uvicorn does
                return
            self._captured_signals.append(sig)  # (re-raised by uvicorn once it stopped, as it does)
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(self._end_sessions)

        def _end_sessions(self) -> None:
            async def end() -> None:
                try:
                    await asyncio.wait_for(gateway.shut_down_sessions(), 5)
                except Exception:  # noqa: BLE001 - stopping matters more than a clean goodbye
                    logging.getLogger(__name__).exception("ending the sessions before shutdown failed")
                finally:
                    self.should_exit = True

            self.ending = asyncio.ensure_future(end())

    return GracefulServer(config)


@command
def inspect(
    url: Annotated[str, typer.Argument(metavar="URL", help="The gateway, e.g. http://127.0.0.1:8000", show_default=False)],
    token: Annotated[str | None, typer.Option(metavar="TOKEN", envvar="VOICERELAY_ADMIN_TOKEN",
                                              help="The gateway's admin token, when it has one.",
                                              show_default=False)] = None,
) -> None:
    """Watch every session of a running [bold]voicerelay serve[/], live (read-only).

    Lists the sessions (node, state, duration, queues, last latency, errors); select one to see its transcripts and raw event log. Until it reaches the gateway it says why not (connection refused, not a voicerelay gateway, admin token missing or rejected) and keeps trying; it reconnects by itself when the gateway restarts.

    Exit codes: 0 quit after watching; 1 quit without ever reaching the gateway (or its admin token was rejected); 2 a bad URL.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        fail(f"inspect takes the gateway's http(s):// URL, not {url!r}")
    from .tui.inspect_app import InspectApp

    inspect_app = InspectApp(url.rstrip("/"), token)
    inspect_app.run()
    if inspect_app.failure is not None:
        raise inspect_app.failure  # the screen is given back: now its one line


Duplex = Annotated[str, typer.Option("--duplex", metavar="auto|full|half", help=(
    "auto: cancel the speakers' echo in the microphone, so the assistant can be interrupted by voice on "
    "laptop speakers (falls back to half, saying why in one line, when the echo canceller is not installed "
    "or the devices cannot be aligned); full: no cancellation (headphones); half: mute the microphone "
    "while the assistant speaks (it can then be interrupted with Enter, not by voice)."))]
EchoCanceller = Annotated[str, typer.Option("--echo-canceller", metavar="webrtc|speex", help=(
    "With --duplex auto: webrtc (WebRTC's AEC3, from the voicerelay[aec] extra) or speex "
    "(the system's libspeexdsp)."))]


@command
def talk(
    input_device: Annotated[str | None, typer.Option(
        "--input-device", metavar="DEVICE", help="Microphone: an index or part of a name from [bold]voicerelay devices[/].",
        show_default=False)] = None,
    output_device: Annotated[str | None, typer.Option(
        "--output-device", metavar="DEVICE", help="Speakers: an index or part of a name from [bold]voicerelay devices[/].",
        show_default=False)] = None,
    push_to_talk: Annotated[bool, typer.Option(
        "--push-to-talk", help="Turn detection off: Enter starts a turn, Enter again sends it.")] = False,
    text: Annotated[bool, typer.Option("--text", help="Also type messages: each line is sent as the user's.")
                    ] = False,
    duplex: Duplex = "auto",
    echo_canceller: EchoCanceller = "webrtc",
    noise_suppression: Annotated[bool, typer.Option(
        "--noise-suppression", help="With --duplex auto: also suppress steady noise in the microphone.")] = False,
    follow_default: Annotated[bool, typer.Option(
        "--follow-default", help="When the microphone or the speakers go away mid-session, go on with the "
                                 "default device instead of stopping with exit code 2. With PulseAudio or "
                                 "PipeWire only (the source or sink removed); elsewhere PortAudio lists the "
                                 "devices once, at start, and a device that goes away stops talk with one "
                                 "line and exit code 2 all the same.")] = False,
    high_pass: Annotated[bool, typer.Option(
        "--high-pass/--no-high-pass", help="With --duplex auto: the canceller filters out rumble below ~80 Hz "
                                           "(while it cancels: it rests between replies).")] = True,
    record: Annotated[Path | None, typer.Option(metavar="DIR",
        help="Record the session into this new folder (in the TUI, [bold]r[/] stops and starts recordings).",
        show_default=False)] = None,
    tui: Annotated[bool, typer.Option(
        "--tui", help="Full-screen view: state, transcripts, microphone level, queues, latencies, usage, "
                      "event log. Press ? in it for its keys.")] = False,
    lint: Annotated[bool, typer.Option("--lint/--no-lint", help=(
        "Check the session's Realtime events live against the rules of [bold]voicerelay lint[/]: each finding "
        "is one line (in the conversation, with --tui) and counted in the TUI's session pane."))] = True,
    backend: Backend = None,
    dialect: DialectOpt = "ga",
    model: Model = "gpt-realtime",
    voice: Voice = "alloy",
    instructions: Instructions = None,
    turn_detection: TurnDetection = "normal",
    log_level: LogLevel = "warning",
) -> None:
    """Talk with the assistant: microphone in, speakers out, interrupt it by speaking.

    Prints the conversation as it goes, with a one-line state. By default the speakers' echo is cancelled in the microphone ([bold]--duplex auto[/]), so speaking interrupts the assistant even on laptop speakers. Enter interrupts the assistant (with [bold]--push-to-talk[/]: starts and sends a turn). Ctrl-C quits. With [bold]--tui[/]: m mute, i interrupt, r record, space push-to-talk (with --push-to-talk), t type a message (with --text), q quit, ? help.

    Exit codes: 0 quit (Ctrl-C, or q in the TUI); 1 the upstream failed; 2 unusable options or devices, or a device that went away mid-session (without [bold]--follow-default[/]).
    """
    import asyncio

    from .console import console as make_console

    from .talk import TalkOptions
    from .talk import talk as run_talk

    _backend(backend)
    if duplex not in ("auto", "full", "half"):
        fail(f"--duplex must be auto, full or half, not {duplex!r}")
    if echo_canceller not in ("webrtc", "speex"):
        fail(f"--echo-canceller must be webrtc or speex, not {echo_canceller!r}")
    options = TalkOptions(config=_config(model, voice, instructions, turn_detection),  # type: ignore[arg-type]
                          backend=backend, dialect=_dialect(dialect), input_device=input_device,  # type: ignore[arg-type]
                          output_device=output_device, push_to_talk=push_to_talk, text=text, duplex=duplex,
                          echo_canceller=echo_canceller, noise_suppression=noise_suppression, high_pass=high_pass,
                          follow_default=follow_default, lint=lint,
                          record=record)
    if tui:
        from .talk import select_devices
        from .tui.talk_app import TalkApp

        select_devices(options)  # before the screen is taken: a plain one-line error
        tui_app = TalkApp(options)
        _setup_logging(log_level, handler=tui_app.log_handler)
        code = tui_app.run()
        if tui_app.failure is not None:
            raise tui_app.failure  # the screen is given back: now its one line
        raise typer.Exit(code or 0)
    _setup_logging(log_level)
    raise typer.Exit(asyncio.run(run_talk(options, make_console(), make_console(stderr=True))))


@command
def devices() -> None:
    """List the sound devices: index, name, channels, usable rates; the defaults are marked.

    [bold]--input-device[/] and [bold]--output-device[/] of [bold]talk[/] take the index or part of the name. With PulseAudio or PipeWire, its sources and sinks are listed too, the ones a run uses marked (PULSE_SOURCE / PULSE_SINK, else the server's defaults).

    Exit codes: 0 listed; 2 PortAudio is missing.
    """
    from .console import console as make_console
    from rich.table import Table

    from .audio.devices import list_devices, load_sounddevice, pulse_defaults, pulse_devices, supported_rates

    sd = load_sounddevice()
    found = list_devices(sd)
    console = make_console()
    if not found:
        console.print("PortAudio sees no sound device.")
    table = Table(box=None, pad_edge=False)
    for column, justify in (("index", "right"), ("name", "left"), ("host API", "left"), ("in", "right"),
                            ("out", "right"), ("default", "left"), ("rates (Hz)", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for device in found:
        marks = [kind for kind in ("input", "output") if device.is_default(kind)]  # type: ignore[arg-type]
        rates = sorted({r for kind in ("input", "output") if device.channels(kind) > 0  # type: ignore[arg-type]
                        for r in supported_rates(device, kind, sd)}, reverse=True)  # type: ignore[arg-type]
        table.add_row(str(device.index), device.name, device.hostapi, str(device.inputs), str(device.outputs),
                      "* " + " and ".join(marks) if marks else "",
                      f"{' '.join(map(str, rates))} (default {device.default_rate})" if rates else "none usable")
    if found:
        console.print(table)
    pulse = pulse_devices()
    if pulse and any(pulse.values()):
        console.print("\nPulseAudio/PipeWire (reached through the [bold]pulse[/] or [bold]default[/] device above; "
                      "pick one per run with PULSE_SOURCE=NAME / PULSE_SINK=NAME):")
        defaults = pulse_defaults()

        def listed(kind: str, names: list[str]) -> str:
            name, why = defaults.get(kind, ("", ""))
            return ", ".join(f"{n} (* {why})" if n == name else n for n in names) or "-"

        console.print(f"  sources: {listed('source', pulse.get('sources', []))}")
        console.print(f"  sinks:   {listed('sink', pulse.get('sinks', []))}")


@command
def lint(
    recordings: Annotated[list[Path], typer.Argument(metavar="RECORDING...", show_default=False,
        help="Recorded session folders (--record of replay, talk and serve).")],
    output_format: Annotated[str, typer.Option("--format", metavar="text|json",
        help="text: one line per finding, like a code linter; json: one document.")] = "text",
    ignore: Annotated[list[str] | None, typer.Option("--ignore", metavar="CODE",
        help="Skip this rule (repeatable), e.g. --ignore VR106.", show_default=False)] = None,
) -> None:
    """Find Realtime protocol mistakes in recorded sessions: each with its code, time, why, and what to do instead.

    Also audits every conversation.item.truncate: the audio received, played (unknown unless the recording says) and sent. The rules are listed in the README ("Lint a recorded session").

    Exit codes: 0 nothing found; 1 findings; 2 unusable input (not a recording, truncated, a newer format version) or options.
    """
    from .console import console as make_console
    from .lint import format_json, format_text, lint_recordings
    from .protocol.lint import RULES

    if output_format not in ("text", "json"):
        fail(f"--format must be text or json, not {output_format!r}")
    codes = [code.upper() for code in ignore or []]
    unknown = sorted(set(codes) - RULES.keys())
    if unknown:
        fail(f"--ignore {unknown[0]}: no such rule (known: {', '.join(RULES)})")
    results = lint_recordings(_expand_globs(recordings), codes)
    console = make_console()
    if output_format == "json":
        console.print(format_json(results), markup=False)
    else:
        for line in format_text(results):
            console.print(line, markup=False)
    raise typer.Exit(1 if any(r.findings for r in results) else 0)


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: errors become one line and their exit code, here and only here."""
    try:
        code = app(args=args, standalone_mode=False)
    except typer.TyperException as exc:  # click's errors as typer exports them: --speed abc, a missing argument
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message()
        if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments at all: its message is the help
            if message.strip():  # (rich help prints itself and leaves the message empty)
                sys.stdout.write(message + "\n")
        else:
            _print_error(f"{message} (see {ctx.command_path} --help)" if ctx is not None else message)
        sys.exit(exc.exit_code)
    except VoiceRelayError as exc:
        _print_error(f"{exc.label}: {exc}" if exc.label else str(exc))
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


def _print_error(message: str) -> None:
    """One line on stderr, whatever the terminal's width (a pipe included)."""
    sys.stderr.write(f"voicerelay: error: {' '.join(message.split())}\n")
    sys.stderr.flush()
