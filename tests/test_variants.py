"""A/B replay: the combinations ``--vary`` names (plain values), and one recording with three
utterances replayed under four variants against the embedded backend (the real command)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicerelay.errors import UsageError
from voicerelay.protocol.config import RealtimeConfig
from voicerelay.variants import parse_vary

from .conftest import RECORDINGS, read_recording, room_noise
from .test_replay import cli


def test_every_combination_in_order_with_the_turn_detection_parameters_merged() -> None:
    variants = parse_vary(["turn_detection=normal,aggressive", "silence_duration_ms=300,800"], RealtimeConfig())
    assert [vary for vary, _ in variants] == [
        {"turn_detection": "normal", "silence_duration_ms": 300}, {"turn_detection": "normal", "silence_duration_ms": 800},
        {"turn_detection": "aggressive", "silence_duration_ms": 300},
        {"turn_detection": "aggressive", "silence_duration_ms": 800}]
    config = variants[3][1]
    assert config.turn_detection_mode == "aggressive" and config.turn_detection()["silence_duration_ms"] == 800
    assert parse_vary(["voice=alloy,echo"], RealtimeConfig())[1][1].voice == "echo"


@pytest.mark.parametrize(("specs", "message"), [
    (["turn_detection"], "takes KEY=VALUE"), (["color=red,blue"], "cannot vary 'color'"),
    (["voice=a", "voice=b"], "names voice twice"), (["turn_detection=eager"], "turn_detection_mode"),
])
def test_unusable_specs_are_usage_errors(specs: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_vary(specs, RealtimeConfig())


def test_a_recording_with_three_utterances_under_four_variants(tmp_path: Path) -> None:
    parts = [room_noise(300)]
    for stem in ("hello_there", "what_is_your_name", "how_are_you"):
        parts += [read_recording(stem), room_noise(1500)]
    wav = tmp_path / "three.wav"
    soundfile.write(wav, np.concatenate(parts), 24_000, subtype="PCM_16")
    recording = tmp_path / "rec"
    assert cli("replay", str(wav), "--speed", "0", "--record", str(recording)).returncode == 0
    report = tmp_path / "ab.json"
    result = cli("replay", str(recording), "--speed", "0", "--vary", "turn_detection=normal,aggressive",
                 "--vary", "silence_duration_ms=300,800", "--json", str(report), timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("turn_detection=")]
    assert len(rows) == 4 and all(row.split()[-1] == "done" for row in rows), result.stdout
    data = json.loads(report.read_text())
    assert [v["vary"]["silence_duration_ms"] for v in data["variants"]] == [300, 800, 300, 800]
    for variant in data["variants"]:
        users = [t["user"] for t in variant["report"]["turns"]]
        assert users == ["hello there", "what is your name", "how are you today"], users
        assert variant["turns"] == 3 and variant["transcripts_differ"] == 0 and variant["lint_findings"] == 0
        assert variant["report"]["cost"]["estimate"] is True


def test_vary_takes_one_input_and_no_single_output(tmp_path: Path) -> None:
    wav = str(RECORDINGS / "hello_there.wav")
    both = cli("replay", wav, wav, "--vary", "voice=alloy,echo")
    assert both.returncode == 2 and both.stderr.strip() == "voicerelay: error: --vary replays one input, not 2"
    out = cli("replay", wav, "--vary", "voice=alloy,echo", "--out", str(tmp_path / "x.wav"))
    assert out.returncode == 2 and "--out and --record take one replay" in out.stderr
