"""A virtual microphone and speakers on a private PulseAudio server, for tests and benchmarks.

A PulseAudio daemon (a child process, not daemonised, so it is stopped and reaped like any other) with everything it writes under one
folder, two null sinks ``vr_speaker`` and ``vr_mic_feed`` (24 kHz mono s16le) and a virtual
source ``vr_mic`` fed by ``vr_mic_feed``'s monitor.

- PortAudio (sounddevice) sees Pulse through ALSA's ``pulse``/``default`` devices; the Pulse
  device a process uses is chosen with ``PULSE_SOURCE``/``PULSE_SINK`` (see :meth:`AudioRig.env`).
- Speech goes into the virtual microphone with ``paplay --device=vr_mic_feed``; what an app
  played is captured from ``vr_speaker.monitor`` with ``parecord``.
- A null sink's monitor yields nothing while nothing plays into it, so a silence stream keeps
  each sink clocked (as the shell rig does).
- A fresh ``vr_mic`` yields nothing for about 1.6 s, and a PortAudio input stream started
  meanwhile spins a core in ``poll`` until it does (measured: 100 % for 1.2 s): :meth:`AudioRig.start`
  returns once the microphone delivers.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

SINKS = ("vr_speaker", "vr_mic_feed")
RATE = 24_000


def available() -> bool:
    """True when the PulseAudio daemon and its command-line tools are installed."""
    return all(shutil.which(tool) for tool in ("pulseaudio", "pactl", "pacat", "paplay", "parecord"))


class AudioRig:
    """``rig = AudioRig(folder); rig.start() ... rig.stop()`` (or use it as a context manager)."""

    def __init__(self, folder: Path) -> None:
        # unix socket paths are limited to 107 bytes: keep the server's socket short
        self.folder = Path(folder)
        self.client_env = {
            "XDG_RUNTIME_DIR": str(self.folder / "xdg"),
            "XDG_CONFIG_HOME": str(self.folder / "config"),
            "PULSE_RUNTIME_PATH": str(self.folder / "run"),
            "PULSE_STATE_PATH": str(self.folder / "state"),
            "PULSE_COOKIE": str(self.folder / "cookie"),
            "PULSE_SERVER": f"unix:{self.folder / 'run' / 'native'}",
        }
        self._daemon: subprocess.Popen[bytes] | None = None
        self._keepalive: dict[str, subprocess.Popen[bytes]] = {}  # sink name -> its silence stream
        self._log = None

    def env(self, source: str | None = "vr_mic", sink: str | None = "vr_speaker") -> dict[str, str]:
        """The environment of a process that should use this rig's devices."""
        env = {**os.environ, **self.client_env}
        for key, value in (("PULSE_SOURCE", source), ("PULSE_SINK", sink)):
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], env=self.env(None, None), capture_output=True, text=True,
                              timeout=10, check=True).stdout

    def start(self) -> Self:
        for sub in ("xdg", "config", "run", "state"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder / "xdg", 0o700)
        os.chmod(self.folder / "run", 0o700)
        sinks = [f"--load=module-null-sink sink_name={name} rate={RATE} channels=1 format=s16le "
                 f"sink_properties=device.description={name}" for name in SINKS]
        self._log = open(self.folder / "pulse.log", "wb")  # noqa: SIM115 - closed in stop()
        self._daemon = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "-n",
             "--use-pid-file=no", "--log-target=stderr",
             f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.folder / 'run' / 'native'}",
             *sinks,
             ("--load=module-virtual-source source_name=vr_mic master=vr_mic_feed.monitor "
              "source_properties=device.description=vr_mic")],
            env=self.env(None, None), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait(lambda: self._run_ok("pactl", "info"), "the PulseAudio server did not start")
            self.pactl("set-default-sink", "vr_speaker")
            self.pactl("set-default-source", "vr_mic")
            for sink in SINKS:  # keep both null sinks clocked (see the module docstring)
                self._clock(sink)
            self._wait(lambda: self.pactl("list", "short", "sinks").count("RUNNING") >= len(SINKS),
                       "the rig's sinks did not start running")
            self._wait_for_microphone()
            time.sleep(0.3)
        except BaseException:
            self.stop()
            raise
        return self

    def _clock(self, sink: str) -> None:
        """Play silence into ``sink`` for as long as the rig runs (or :meth:`unplug_sink`)."""
        self._keepalive[sink] = subprocess.Popen(
            ["pacat", "--playback", "--latency-msec=20", f"--device={sink}", f"--rate={RATE}",
             "--channels=1", "--format=s16le", "/dev/zero"],
            env=self.env(None, None), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def plug_sink(self, name: str) -> None:
        """Add a null sink ``name`` (24 kHz mono, clocked), or put back one :meth:`unplug_sink` removed."""
        self.pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={RATE}", "channels=1",
                   "format=s16le", f"sink_properties=device.description={name}")
        self._clock(name)
        self._wait(lambda: any(line.split("\t")[1:2] == [name] and "RUNNING" in line
                               for line in self.pactl("list", "short", "sinks").splitlines()),
                   f"the rig's sink {name} did not start running")

    def unplug_sink(self, name: str) -> None:
        """Remove the sink ``name`` as an unplugged headset goes: its module is unloaded (the server
        moves the streams that played into it to its default sink)."""
        keepalive = self._keepalive.pop(name, None)
        if keepalive is not None:
            keepalive.terminate()
            keepalive.wait(5)
        module = next(line.split("\t")[0] for line in self.pactl("list", "short", "modules").splitlines()
                      if "module-null-sink" in line and f"sink_name={name} " in line + " ")
        self.pactl("unload-module", module)

    def echo(self, gain_db: float = -6.0, delay_ms: int = 30) -> Echo:
        """Feed what the speakers play back into the microphone, as laptop speakers do: a
        ``module-loopback`` from ``vr_speaker.monitor`` into ``vr_mic_feed`` (where speech played
        with ``paplay`` mixes with it) at ``gain_db`` and ``delay_ms``. Use it as a context
        manager; :meth:`Echo.remove` unloads it."""
        return Echo(self, gain_db, delay_ms)

    def _wait_for_microphone(self, timeout: float = 10.0) -> None:
        """Until ``vr_mic`` yields samples (see the module docstring)."""
        with subprocess.Popen(["pacat", "--record", "--latency-msec=20", "--device=vr_mic", f"--rate={RATE}",
                               "--channels=1", "--format=s16le", "--raw"],
                              env=self.env(None, None), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL) as recorder:
            assert recorder.stdout is not None
            try:
                readable, _, _ = select.select([recorder.stdout], [], [], timeout)
                if not readable or not os.read(recorder.stdout.fileno(), 4096):
                    raise RuntimeError(f"the rig's microphone vr_mic yielded nothing within {timeout:g} s")
            finally:
                recorder.terminate()

    def _run_ok(self, *cmd: str) -> bool:
        return subprocess.run(cmd, env=self.env(None, None), capture_output=True, timeout=10, check=False).returncode == 0

    def _wait(self, ok: object, message: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._daemon is not None and self._daemon.poll() is not None:
                break
            if ok():  # type: ignore[operator]
                return
            time.sleep(0.05)
        log = (self.folder / "pulse.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{message}; pulse.log ends with:\n{log}")

    def stop(self) -> None:
        for proc in [*self._keepalive.values(), self._daemon]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self._keepalive.values(), self._daemon]:
            if proc is not None:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self._keepalive.clear()
        self._daemon = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Echo:
    """The speakers' sound fed back into the rig's microphone (see :meth:`AudioRig.echo`)."""

    def __init__(self, rig: AudioRig, gain_db: float, delay_ms: int) -> None:
        self.rig, self.gain_db, self.delay_ms = rig, gain_db, delay_ms
        self.module: str | None = None

    def add(self) -> Self:
        # the loopback's sink input gets the gain (pactl takes dB); no volume sharing with the sink
        self.module = self.rig.pactl(
            "load-module", "module-loopback", "source=vr_speaker.monitor", "sink=vr_mic_feed",
            f"latency_msec={self.delay_ms}", "adjust_time=0", "source_dont_move=true", "sink_dont_move=true",
            "remix=false", "sink_input_properties=media.name=vr_echo").strip()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for block in self.rig.pactl("list", "sink-inputs").split("Sink Input #")[1:]:
                if re.search(rf"^\s*Owner Module: {self.module}$", block, re.MULTILINE):
                    self.rig.pactl("set-sink-input-volume", block.split()[0], f"{self.gain_db}dB")
                    time.sleep(0.3)  # the loopback fills its latency first
                    return self
            time.sleep(0.05)
        self.remove()
        raise RuntimeError("the echo loopback's sink input did not appear")

    def remove(self) -> None:
        if self.module is not None:
            self.rig.pactl("unload-module", self.module)
            self.module = None

    def __enter__(self) -> Self:
        return self.add()

    def __exit__(self, *exc: object) -> None:
        self.remove()
