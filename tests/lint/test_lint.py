"""``voicerelay lint`` on recordings of real sessions (tests/lint/scenarios.py made them against the
embedded backend): each rule fires on its mistake and stays quiet on the right way to do it; the
command's output, ``--ignore``, ``--format json`` and exit codes; unusable input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voicerelay.backend.engines import Engines
from voicerelay.errors import RecordingError
from voicerelay.lint import lint_recording
from voicerelay.protocol.lint import RULES

from .scenarios import CLEAN, HERE, SCENARIOS, record

ROOT = Path(__file__).resolve().parents[2]
TRIGGERS = {name: code for name, (_, code, _) in SCENARIOS.items() if code}
CLEANS = sorted(name for name, (_, code, _) in SCENARIOS.items() if code is None)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "voicerelay", "lint", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)


def codes(name: str, ignore: tuple[str, ...] = ()) -> list[str]:
    return [f.code for f in lint_recording(HERE / name, ignore).findings]


def test_every_rule_has_a_recording_that_triggers_it_and_one_that_does_not() -> None:
    assert set(TRIGGERS.values()) == set(RULES) == set(CLEAN)
    assert all((HERE / name / "session.jsonl").is_file() for name in SCENARIOS)


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_the_mistake_is_found(name: str) -> None:
    found = codes(name)
    assert TRIGGERS[name] in found, found
    assert found.count(TRIGGERS[name]) == 1, found  # said once, not once per event


@pytest.mark.parametrize("name", CLEANS)
def test_the_right_way_is_clean(name: str) -> None:
    assert codes(name) == []


@pytest.mark.parametrize("code", sorted(CLEAN))
def test_each_rule_is_quiet_on_its_clean_twin(code: str) -> None:
    assert code not in codes(CLEAN[code])


def test_the_finding_is_dated_at_the_mistake() -> None:
    """VR103 is only known once the grace is over (or the session ended), but it is dated at the
    function_call_output that was left without a response.create."""
    from voicerelay.recording import RecordedSession

    session = RecordedSession.open(HERE / "vr103_tool_output_without_response")
    [output] = [r for r in session.events if r.direction == "up" and r.event.get("type") == "conversation.item.create"
                and r.event["item"]["type"] == "function_call_output"]
    [finding] = lint_recording(session.folder).findings
    assert finding.t == output.t and output.event["item"]["call_id"] in finding.message


def test_truncates_are_audited_with_received_played_and_sent() -> None:
    [past] = lint_recording(HERE / "vr101_truncate_past_received").truncates
    assert past.sent_ms == past.received_ms + 1000 and past.played_ms is None
    assert past.verdict == "past received" and past.server.startswith("rejected: Audio content of")
    [fine] = lint_recording(HERE / "vr101_clean").truncates
    assert fine.sent_ms == fine.received_ms // 2 and fine.verdict == "ok" and fine.server == "accepted"
    [clock] = lint_recording(HERE / "vr102_truncate_wall_clock").truncates
    assert clock.verdict == "wall clock" and clock.received_ms > clock.sent_ms + 300


# ------------------------------------------------------------------------------ made afresh


@pytest.mark.parametrize("name", ["vr101_truncate_past_received", "vr104_create_while_active", "vr104_clean"])
async def test_a_fresh_run_of_the_scenario_lints_the_same(name: str, engines: Engines, tmp_path: Path) -> None:
    folder = await record(name, tmp_path / name, engines=engines)
    assert [f.code for f in lint_recording(folder).findings] == ([TRIGGERS[name]] if name in TRIGGERS else [])


# ------------------------------------------------------------------------------ the command

LINE = re.compile(r"^(?P<path>\S+):(?P<t>\d+\.\d\d)s (?P<code>VR\d{3}) (?P<message>.+) \(do instead: (?P<instead>.+)\)$")


def test_text_output_is_one_line_per_finding_and_exit_1() -> None:
    path = "tests/lint/recordings/vr109_voice_after_audio"
    result = run(path)
    assert result.returncode == 1, result.stderr
    [line] = result.stdout.splitlines()
    match = LINE.match(line)
    assert match and match["path"] == path and match["code"] == "VR109"  # never wrapped at 80 columns
    assert match["instead"] == RULES["VR109"].instead and "'alloy' to 'echo'" in match["message"]


def test_truncate_audit_lines_and_a_clean_recording_exit_0() -> None:
    result = run("tests/lint/recordings/vr101_clean")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert re.fullmatch(r"\S+:\d+\.\d\ds truncate item_\w+: received (\d+) ms, played unknown, sent (\d+) ms; ok; "
                        r"server: accepted", line)


def test_several_recordings_and_ignore() -> None:
    both = ("tests/lint/recordings/vr106_cancel_nothing", "tests/lint/recordings/vr112_clear_output_buffer")
    result = run(*both)
    assert result.returncode == 1
    assert [LINE.match(line)["code"] for line in result.stdout.splitlines()] == ["VR106", "VR112"]  # type: ignore[index]
    ignored = run(*both, "--ignore", "VR106", "--ignore", "vr112")
    assert ignored.returncode == 0 and ignored.stdout == ""


def test_json_output() -> None:
    result = run("tests/lint/recordings/vr101_truncate_past_received", "--format", "json")
    assert result.returncode == 1
    [rec] = json.loads(result.stdout)["recordings"]
    assert [f["code"] for f in rec["findings"]] == ["VR101"]
    assert set(rec["findings"][0]) == {"code", "t", "severity", "message", "instead"}
    [audit] = rec["truncates"]
    assert audit["played_ms"] is None and audit["sent_ms"] == audit["received_ms"] + 1000


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(HERE / name, tmp_path / name))


def test_unusable_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    newer = _copy("vr106_cancel_nothing", tmp_path / "newer")
    lines = (newer / "session.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header["event"]["version"] = 2
    (newer / "session.jsonl").write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    truncated = _copy("vr105_clean", tmp_path / "truncated")
    wav = truncated / "input.wav"
    wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    cut_json = _copy("vr104_clean", tmp_path / "cut")
    text = (cut_json / "session.jsonl").read_text()
    (cut_json / "session.jsonl").write_text(text[: len(text) // 2])
    cases = {newer: "unsupported recording version 2", truncated: "is it truncated?",
             cut_json: "is not valid JSON", ROOT / "recordings" / "hello_there.wav": "not a folder",
             tmp_path / "nothing": "no such folder"}
    for path, reason in cases.items():
        result = run(str(path))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (path, result.stderr)
        assert lines[0].startswith("voicerelay: error: cannot open recording") and reason in lines[0], lines
        with pytest.raises(RecordingError):
            lint_recording(path)


def test_unusable_options_exit_2() -> None:
    for args in (["--ignore", "VR999"], ["--format", "xml"]):
        result = run("tests/lint/recordings/vr104_clean", *args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_states_the_exit_codes() -> None:
    text = " ".join(run("--help").stdout.split())
    assert "Exit codes: 0 nothing found; 1 findings; 2 unusable input" in text


def test_readme_lists_every_rule() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Lint a recorded session: `voicerelay lint`", 1)[1].split("\n## ", 1)[0]
    rows = {cells[0].strip("` "): cells for line in section.splitlines() if line.startswith("| `VR")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert set(rows) == set(RULES)
    for code, rule in RULES.items():
        assert rows[code][1] == rule.title and rows[code][2] == rule.instead, code
