"""Devices that go away mid-session, on PulseAudio (or PipeWire's pulse server).

PortAudio reaches such a server through ALSA's ``pulse`` device, and when the source or sink a
stream plays through is removed (a headset unplugged, a module unloaded), the server moves the
stream to its default device: the callbacks go on, nothing fails, and ``talk`` would carry on
with another microphone (a speaker's monitor, say) without a word. :class:`PulseWatch` reads
``pactl subscribe`` on a thread, keeps track of which source and sink this process's streams
use, and calls ``on_gone(kind, name)`` when one of them is removed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable

__all__ = ["PulseWatch"]

_EVENT = re.compile(r"^Event '(\w+)' on ([\w-]+) #(\d+)$")
_STREAMS = {"source-output": ("source", "Source Output #", "Source: "),
            "sink-input": ("sink", "Sink Input #", "Sink: ")}


class PulseWatch:
    """Calls ``on_gone("microphone" | "speakers", device_name)`` (from its own thread) when a
    source or sink this process records from or plays to is removed. :meth:`start` returns False
    when there is no PulseAudio server to watch."""

    def __init__(self, on_gone: Callable[[str, str], None], pid: int | None = None) -> None:
        self.on_gone = on_gone
        self.pid = str(pid or os.getpid())
        self._used: dict[str, dict[str, str]] = {"source": {}, "sink": {}}  # device index -> name
        self._before: dict[str, dict[str, str]] = {"source": {}, "sink": {}}  # before the last move
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        if shutil.which("pactl") is None:
            return False
        try:
            self._proc = subprocess.Popen(["pactl", "subscribe"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True, env={**os.environ, "LC_ALL": "C"})
        except OSError:
            return False
        self.refresh()
        self._thread = threading.Thread(target=self._read, args=(self._proc,), name="pulse-watch", daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        proc, thread, self._proc, self._thread = self._proc, self._thread, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        if thread is not None:
            thread.join(2)  # it reads to the end of pactl's output, then returns
        if proc.stdout is not None:
            proc.stdout.close()  # (only now: closing it under the reading thread fails that thread)

    def refresh(self) -> None:
        """Which sources and sinks this process's streams use now."""
        for stream, (kind, header, key) in _STREAMS.items():
            names = _short(f"{kind}s")
            used = {}
            for block in _pactl("list", f"{stream}s").split(header)[1:]:
                if f'application.process.id = "{self.pid}"' not in block:
                    continue
                for line in block.splitlines():
                    line = line.strip()
                    if line.startswith(key):
                        index = line[len(key):].strip()
                        used[index] = names.get(index, index)
            if used and used != self._used[kind]:  # (a stream paused for a moment keeps its last device)
                # the server moves a stream off a device *before* it announces the device's removal:
                # the device it was on is kept until the next move
                self._before[kind], self._used[kind] = self._used[kind], used

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = _EVENT.match(line.strip())
            if match is None:
                continue
            event, facility, index = match.groups()
            if facility in _STREAMS and event in ("new", "change"):
                self.refresh()
            elif facility in ("source", "sink") and event == "remove":
                used, before = self._used[facility], self._before[facility]
                if index in used or index in before:
                    name = used.pop(index, None) or before.pop(index)
                    self.on_gone("microphone" if facility == "source" else "speakers", name)


def _pactl(*args: str) -> str:
    try:
        result = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=3, check=False,
                                env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def _short(kind: str) -> dict[str, str]:
    return {fields[0]: fields[1] for line in _pactl("list", "short", kind).splitlines()
            if len(fields := line.split("\t")) > 1}
