"""``voicerelay devices`` on the PulseAudio rig: the devices a run really uses are marked.

PortAudio sees the rig as two ALSA devices, ``pulse`` and ``default``, that both lead to the
PulseAudio server; the real microphone and speakers are the server's source and sink (its
defaults, or PULSE_SOURCE / PULSE_SINK), so those are marked too.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .. import audio_rig

pytestmark = pytest.mark.skipif(not audio_rig.available(), reason="needs PulseAudio: apt-get install pulseaudio")


def devices(env: dict[str, str]) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "voicerelay", "devices"], env={**env, "COLUMNS": "200"},
                            capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.splitlines()


def line(lines: list[str], pattern: str) -> str:
    return next(text for text in lines if re.search(pattern, text))


def test_the_servers_defaults_are_marked(rig: audio_rig.AudioRig) -> None:
    lines = devices(rig.env(source=None, sink=None))  # the rig's server defaults: vr_mic, vr_speaker
    assert "* input and output" in line(lines, r"^\s+1\s+default\s")  # PortAudio's own default
    assert "*" not in line(lines, r"^\s+0\s+pulse\s")
    sources = line(lines, r"^\s+sources:")
    sinks = line(lines, r"^\s+sinks:")
    assert "vr_mic (* default)" in sources and sources.count("*") == 1, sources
    assert "vr_speaker (* default)" in sinks and sinks.count("*") == 1, sinks


def test_pulse_source_and_sink_of_the_environment_are_marked(rig: audio_rig.AudioRig) -> None:
    lines = devices(rig.env(source="vr_speaker.monitor", sink="vr_mic_feed"))
    sources = line(lines, r"^\s+sources:")
    sinks = line(lines, r"^\s+sinks:")
    assert "vr_speaker.monitor (* from PULSE_SOURCE)" in sources and sources.count("*") == 1, sources
    assert "vr_mic_feed (* from PULSE_SINK)" in sinks and sinks.count("*") == 1, sinks
