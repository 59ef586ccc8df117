"""The ``voicerelay`` command line. Each command imports what it needs when it runs, so that
``voicerelay --help`` loads no audio, network or numeric library."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, NoReturn

import typer

app = typer.Typer(
    name="voicerelay",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class UsageFailure(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 2) -> NoReturn:
    raise UsageFailure(message, code)


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=level.upper(), format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(rich_tracebacks=False, show_path=False)])


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


LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.", show_default=True)]


@app.command()
def backend(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).", min=0, max=65535)] = 8765,
    pace: Annotated[float, typer.Option(
        help="Stream reply audio at this many times real time (0 = as fast as possible).", min=0)] = 10.0,
    max_session_seconds: Annotated[float, typer.Option(
        help="End each session with [bold]session_expired[/] after this long, like OpenAI's 60-minute cap.",
        min=0.1)] = 3600.0,
    log_level: LogLevel = "info",
) -> None:
    """Run the embedded offline Realtime server (VAD, speech-to-text, a responder, text-to-speech).

    It speaks the OpenAI Realtime protocol at [bold]ws://HOST:PORT/v1/realtime[/]: GA by default, beta when the client sends [bold]OpenAI-Beta: realtime=v1[/]. Any Realtime client works, the official openai SDK included ([italic]websocket_base_url="ws://HOST:PORT/v1"[/]).
    """
    import asyncio

    from rich.console import Console

    from .backend.server import run

    _setup_logging(log_level)
    console = Console(stderr=True)

    def ready(server: object) -> None:
        console.print(f"[bold green]Embedded Realtime backend[/] on [cyan]{server.url}[/]  "  # type: ignore[attr-defined]
                      "(GA; beta with [bold]OpenAI-Beta: realtime=v1[/]). Ctrl-C stops it.")

    try:
        asyncio.run(run(host, port, pace, max_session_seconds, ready))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        console.print("stopped.")


def main() -> None:
    """Console-script entry point: one-line errors, conventional exit codes."""
    try:
        app()
    except UsageFailure as exc:
        typer.echo(f"voicerelay: error: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)
