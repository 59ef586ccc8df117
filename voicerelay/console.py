"""What the command line prints, and how: consoles that never wrap, one transcript line, log records.

Transcripts, errors and log records are one record a line whatever the terminal, so a script can
grep them: a line longer than the terminal is left for the terminal to fold (rich's
``soft_wrap``), never cut into several by us. Only help text is wrapped.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.text import Text

ROLE_STYLES = {"user": "bold cyan", "assistant": "bold magenta"}


def console(*, stderr: bool = False) -> Console:
    """A console for transcripts and messages: no wrapping, no syntax highlighting."""
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def transcript_line(role: str, text: str, note: str = "") -> Text:
    """One final line of the conversation, as every view prints it."""
    return Text.assemble((f"{role:>9}  ", ROLE_STYLES.get(role, "bold")), text, (note, "dim"))


def log_handler() -> logging.Handler:
    """Log records on stderr: rich's columns on a terminal, else one plain line per record."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        return RichHandler(console=console(stderr=True), rich_tracebacks=False, show_path=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    return handler
