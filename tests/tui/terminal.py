"""A real terminal for the full-screen commands: tmux, on a private server per terminal.

``Terminal(args, env)`` runs the command in a detached tmux window of a fixed size; the window
stays after the command exits, so what it printed after leaving the alternate screen (a
traceback, an error line) and its exit code can be read. ``screen()`` is what a user would see.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from typing import Self

EXIT_MARK = "__voicerelay_exit="


def available() -> bool:
    return shutil.which("tmux") is not None


class Terminal:
    def __init__(self, args: list[str], env: dict[str, str], size: tuple[int, int] = (140, 40)) -> None:
        self.socket = f"vr-test-{uuid.uuid4().hex[:8]}"
        self.args = args
        self.env = {**env, "TERM": "xterm-256color"}
        self.size = size
        self.socket_path = ""

    def _tmux(self, *args: str, check: bool = True) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
                              timeout=10, check=check).stdout

    def __enter__(self) -> Self:
        # the command's exit code is printed once it ended; the window stays for screen()
        command = f"{shlex.join(self.args)}; echo {EXIT_MARK}$?; sleep 600"
        width, height = self.size
        self._tmux("-f", os.devnull, "new-session", "-d", "-x", str(width), "-y", str(height), command)
        self.socket_path = self._tmux("display-message", "-p", "#{socket_path}").strip()
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmux("kill-server", check=False)
        if self.socket_path:  # tmux leaves its socket file behind
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)

    def screen(self) -> str:
        """What the window shows now (the alternate screen while a full-screen app runs)."""
        return self._tmux("capture-pane", "-p", "-J")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Until ``pattern`` (a regular expression) is on the screen; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.screen())
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen within {timeout} s:\n{self.screen()}")
            time.sleep(0.1)

    def keys(self, *keys: str) -> None:
        """tmux key names: ``q``, ``C-c``, ``Enter``, ``?``."""
        self._tmux("send-keys", *keys)

    def exit_code(self, timeout: float = 10.0) -> int:
        """Wait for the command to end; its exit code."""
        return int(self.wait_for(re.escape(EXIT_MARK) + r"(\d+)", timeout)[1])

    def after_exit(self) -> str:
        """What the command left on the normal screen, up to its exit code."""
        return self.screen().split(EXIT_MARK)[0]
