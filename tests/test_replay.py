"""``voicerelay replay`` end to end: real WAVs through the relay to the embedded backend over a
real WebSocket; the CLI's exit codes and messages as a user sees them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr
from rich.console import Console

from voicerelay.backend.engines import Engines
from voicerelay.backend.phrases import RECORDING_SENTENCES
from voicerelay.backend.server import BackendServer
from voicerelay.errors import UpstreamTimeout
from voicerelay.protocol.audio import rms_dbfs
from voicerelay.replay import ReplayInputError, ReplayOptions, replay

from .conftest import RECORDINGS, read_recording, room_noise
from .test_cli import _children, _wait_gone


async def run_replay(path: Path, backend: BackendServer, **kw: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = ReplayOptions(path=path, backend=backend.url, speed=kw.pop("speed", 0), **kw)  # type: ignore[arg-type]
    code = await replay(options, Console(file=out, width=200), Console(file=err, width=200))
    return code, out.getvalue(), err.getvalue()


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    full_env.pop("OPENAI_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "voicerelay", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.mark.parametrize("stem", sorted(RECORDING_SENTENCES))
async def test_each_recording_replays_to_its_transcript(backend: BackendServer, stem: str, tmp_path: Path) -> None:
    reply_wav = tmp_path / "reply.wav"
    report = tmp_path / "report.json"
    code, out, err = await run_replay(RECORDINGS / f"{stem}.wav", backend, out=reply_wav, json_path=str(report))
    assert code == 0, err
    data = json.loads(report.read_text())
    assert [t["user"] for t in data["turns"]] == [RECORDING_SENTENCES[stem]]
    turn = data["turns"][0]
    assert turn["status"] == "completed" and turn["latency_ms"]["first_audio"] > 0
    if turn["tool_calls"]:
        pytest.fail("no tools were configured")
    assert f"user  {RECORDING_SENTENCES[stem]}" in out and "assistant  " in out
    pcm, rate = soundfile.read(reply_wav, dtype="int16")
    assert rate == 24_000 and pcm.size >= 12_000 and rms_dbfs(pcm) > -35


@pytest.mark.parametrize(("rate", "channels", "subtype"), [(44_100, 2, "FLOAT"), (8_000, 1, "PCM_16"),
                                                           (48_000, 2, "PCM_24")])
async def test_other_rates_and_channel_counts(backend: BackendServer, tmp_path: Path, rate: int, channels: int,
                                              subtype: str) -> None:
    pcm = read_recording("how_are_you").astype(np.float32) / 32768
    resampled = soxr.resample(pcm, 24_000, rate)
    data = np.repeat(resampled[:, None], channels, axis=1) if channels > 1 else resampled
    path = tmp_path / f"in_{rate}.wav"
    soundfile.write(path, data, rate, subtype=subtype)
    code, out, err = await run_replay(path, backend, json_path=str(tmp_path / "r.json"))
    assert code == 0, err
    turns = json.loads((tmp_path / "r.json").read_text())["turns"]
    assert [t["user"] for t in turns] == ["how are you today"]
    assert turns[0]["assistant"] == "I am fine, thank you for asking."


async def test_expect_passes_and_fails(backend: BackendServer) -> None:
    wav = RECORDINGS / "what_is_your_name.wav"
    assert (await run_replay(wav, backend, expect=r"name is voicerelay"))[0] == 0
    code, _, err = await run_replay(wav, backend, expect=r"^nothing like this$")
    assert code == 1 and "matched no transcript" in err


async def test_a_recorded_session_replays_to_the_same_transcripts(backend: BackendServer, tmp_path: Path) -> None:
    folder = tmp_path / "session"
    code, _, err = await run_replay(RECORDINGS / "hello_there.wav", backend, record=folder)
    assert code == 0, err
    assert {p.name for p in folder.iterdir()} == {"session.jsonl", "input.wav", "output.wav"}
    report = tmp_path / "again.json"
    code, out, err = await run_replay(folder, backend, compare=True, json_path=str(report))
    assert code == 0, err
    compare = json.loads(report.read_text())["compare"]
    assert compare["user"]["same"] and compare["assistant"]["same"], compare
    assert compare["user"]["replayed"] == ["hello there"]
    assert "user transcripts match the recording" in out


async def test_turn_detection_disabled_commits_at_the_end(backend: BackendServer, tmp_path: Path) -> None:
    from voicerelay.protocol.config import RealtimeConfig

    report = tmp_path / "r.json"
    code, _, err = await run_replay(RECORDINGS / "what_can_you_do.wav", backend, json_path=str(report),
                                    config=RealtimeConfig(turn_detection_mode="disabled"))
    assert code == 0, err
    turns = json.loads(report.read_text())["turns"]
    assert [t["user"] for t in turns] == ["what can you do"]
    assert turns[0]["assistant"].startswith("I can greet you")


async def test_the_relay_recycles_before_the_session_cap(engines: Engines, tmp_path: Path) -> None:
    # two utterances 4 s apart in real time against a backend that caps sessions at 3 s
    pcm = np.concatenate([read_recording("hello_there"), room_noise(2000), read_recording("how_are_you")])
    path = tmp_path / "two_turns.wav"
    soundfile.write(path, pcm, 24_000, subtype="PCM_16")
    report = tmp_path / "r.json"
    async with BackendServer(port=0, engines=engines, max_session_seconds=3) as server:
        code, out, err = await run_replay(path, server, speed=1.0, json_path=str(report))
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["recycles"] >= 1 and "opened a new upstream session" in err
    assert [t["user"] for t in data["turns"]] == ["hello there", "how are you today"]
    assert not [e for e in data["errors"] if "session_expired" in e]


async def test_backend_stopped_mid_response_ends_replay_quickly(engines: Engines, tmp_path: Path) -> None:
    server = BackendServer(port=0, engines=engines, pace=0.5)  # a 3 s reply takes 6 s to stream
    await server.start()
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "replay", str(RECORDINGS / "what_is_your_name.wav"), "--speed", "0",
        "--backend", server.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    async with asyncio.timeout(30):
        while b"user" not in await proc.stdout.readline():
            pass
    await asyncio.sleep(0.3)  # the reply is streaming now
    stopped = time.monotonic()
    await server.close()
    async with asyncio.timeout(5):
        code = await proc.wait()
    elapsed = time.monotonic() - stopped
    stderr = (await proc.stderr.read()).decode()
    assert code == 1 and elapsed < 5
    assert "upstream failed" in stderr and "Traceback" not in stderr


def test_replay_runs_on_the_embedded_backend_by_default(tmp_path: Path) -> None:
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), "--speed", "0", "--json", "-")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"].startswith("embedded backend")
    assert data["turns"][0]["user"] == "hello there"


def _truncated_wav(tmp_path: Path) -> Path:
    path = tmp_path / "cut.wav"
    soundfile.write(path, read_recording("hello_there"), 24_000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing.wav", "missing.wav"),
    (lambda p: (p / "notes.wav").write_text("these are not samples") and p / "notes.wav", "notes.wav"),
    (lambda p: (soundfile.write(p / "empty.wav", np.zeros(0, dtype=np.int16), 24_000) or p / "empty.wav"),
     "empty.wav"),
    (_truncated_wav, "truncated"),
    (lambda p: (p / "folder").mkdir() or p / "folder", "session.jsonl"),
], ids=["missing", "not audio", "empty", "truncated", "folder without session.jsonl"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = cli("replay", str(path), "--speed", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voicerelay: error:") and message in lines[0]


def test_bad_options_are_exit_2() -> None:
    wav = str(RECORDINGS / "hello_there.wav")
    for args, message in ([["--expect", "("], "regular expression"], [["--backend", "http://x"], "--backend"],
                          [["--dialect", "v2"], "--dialect"], [["--turn-detection", "eager"], "turn_detection_mode"]):
        result = cli("replay", wav, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_replay_input_error_is_raised_in_process(tmp_path: Path) -> None:
    with pytest.raises(ReplayInputError, match="cannot read"):
        asyncio.run(replay(ReplayOptions(path=tmp_path / "nope.wav"), Console(file=io.StringIO()),
                           Console(file=io.StringIO())))


def test_connection_refused_is_a_clear_message() -> None:
    with socket.socket() as sock:  # a port that surely has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), "--backend", f"ws://127.0.0.1:{port}/v1/realtime")
    assert result.returncode == 1 and time.monotonic() - started < 15
    assert f"cannot reach ws://127.0.0.1:{port}/v1/realtime" in result.stderr
    assert "Traceback" not in result.stderr


async def test_rejected_handshake_and_fatal_error_are_clear(backend: BackendServer) -> None:
    wav = RECORDINGS / "hello_there.wav"
    rejected = await asyncio.to_thread(cli, "replay", str(wav), "--backend",
                                       f"ws://127.0.0.1:{backend.port}/v1/elsewhere")
    assert rejected.returncode == 1 and "rejected the connection: HTTP 404" in rejected.stderr
    fatal = await asyncio.to_thread(cli, "replay", str(wav), "--backend",
                                    f"ws://127.0.0.1:{backend.port}/v1/realtime?model=")
    assert fatal.returncode == 1 and "ended the session: missing_model" in fatal.stderr
    assert "Traceback" not in rejected.stderr + fatal.stderr


async def test_the_api_key_is_never_logged_or_recorded(backend: BackendServer, tmp_path: Path) -> None:
    key = "sk-test-" + "k3y" * 10
    folder = tmp_path / "rec"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voicerelay", "replay", str(RECORDINGS / "hello_there.wav"), "--speed", "0",
         "--backend", backend.url, "--record", str(folder), "--log-level", "debug", "--json", "-"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "OPENAI_API_KEY": key, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "<-" in result.stderr  # debug logging of events really ran
    written = "".join(p.read_bytes().decode("latin-1") for p in folder.iterdir())
    for text in (result.stdout, result.stderr, written):
        assert key not in text


@pytest.fixture
def mute_upstream() -> Any:
    """A WebSocket server in a thread that accepts and never configures the session."""
    import threading

    from websockets.sync.server import serve

    def handler(ws: Any) -> None:
        for _ in ws:
            pass

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1/realtime"
        server.shutdown()


def test_a_server_that_never_configures_the_session_is_one_line_exit_1(mute_upstream: str) -> None:
    started = time.monotonic()
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), "--backend", mute_upstream, "--timeout", "1")
    assert result.returncode == 1 and time.monotonic() - started < 10, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voicerelay: error: upstream failed:"), lines
    assert "within 1 s" in lines[0] and "Traceback" not in result.stderr


async def test_replies_that_time_out_exit_1_and_the_report_is_written(engines: Engines, tmp_path: Path) -> None:
    async with BackendServer(port=0, engines=engines, pace=0.1) as slow:  # a 3 s reply streams for 30 s
        report = tmp_path / "r.json"
        with pytest.raises(UpstreamTimeout) as failure:
            await run_replay(RECORDINGS / "what_is_your_name.wav", slow, timeout=1.0, json_path=str(report),
                             expect="voicerelay")
        assert failure.value.exit_code == 1 and "--timeout 1 s" in str(failure.value)
        assert json.loads(report.read_text())["turns"][0]["user"] == "what is your name"


def _noise_wav(tmp_path: Path, ms: int = 3000) -> Path:
    path = tmp_path / "quiet.wav"
    soundfile.write(path, room_noise(ms), 24_000, subtype="PCM_16")
    return path


async def test_a_quiet_file_with_a_manual_commit_finishes_when_answered(backend: BackendServer,
                                                                         tmp_path: Path) -> None:
    from voicerelay.protocol.config import RealtimeConfig

    started = time.monotonic()
    code, out, err = await run_replay(_noise_wav(tmp_path), backend, timeout=60.0,
                                      config=RealtimeConfig(turn_detection_mode="disabled"))
    assert code == 0, err  # (a --timeout that expired is exit 1)
    # and not by waiting for the --timeout: the (empty) transcript and the response came (the run takes
    # ~7 s on a quiet machine, the file's length; 8.9 s was seen under load, so the margin is wide)
    assert time.monotonic() - started < 30
    # nothing was heard, so nothing is said (as on OpenAI, no "Sorry..." reply), and the turn still ends
    assert "turn 1: completed, no audio" in out and "assistant  " not in out


async def test_a_file_without_speech_says_so(backend: BackendServer, tmp_path: Path) -> None:
    code, out, err = await run_replay(_noise_wav(tmp_path), backend)
    assert code == 0 and out == ""
    assert f"no speech was detected in {tmp_path / 'quiet.wav'}" in err


def test_backend_openai_without_a_key_is_a_usage_error() -> None:
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), "--backend", "openai")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("voicerelay: error: --backend openai needs an API key: set OPENAI_API_KEY in "
                                     "the environment")


def test_nothing_is_wrapped_when_the_output_is_a_pipe(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "OPENAI_API_KEY")}
    result = subprocess.run([sys.executable, "-m", "voicerelay", "replay", str(RECORDINGS / "what_can_you_do.wav"),
                             "--speed", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    answer = "assistant  I can greet you, tell you my name, tell a joke, and repeat what you say."
    assert answer in result.stdout.splitlines()  # 83 characters: one line, not two
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6)
    deep.mkdir(parents=True)
    quiet = _noise_wav(deep)
    result = subprocess.run([sys.executable, "-m", "voicerelay", "replay", str(quiet), "--speed", "0"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and result.stderr.splitlines() == [f"voicerelay: no speech was detected in {quiet}"]
    missing = deep / "missing.wav"
    result = subprocess.run([sys.executable, "-m", "voicerelay", "replay", str(missing)], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and str(missing) in result.stderr


async def test_compare_differences_exit_1_with_a_short_diff(backend: BackendServer, tmp_path: Path) -> None:
    folder = tmp_path / "session"
    code, _, err = await run_replay(RECORDINGS / "hello_there.wav", backend, record=folder)
    assert code == 0, err
    log = folder / "session.jsonl"
    log.write_text(log.read_text().replace('"transcript":"hello there"', '"transcript":"hello world"'))
    code, out, err = await run_replay(folder, backend, compare=True)
    assert code == 1, err
    assert "user transcripts differ from the recording" in out
    assert "-hello world" in out and "+hello there" in out


def test_compare_on_a_wav_is_a_usage_error() -> None:
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), "--compare")
    assert result.returncode == 2
    assert result.stderr.startswith("voicerelay: error: --compare needs a recorded session folder")
    assert len(result.stderr.splitlines()) == 1


def test_an_unwritable_json_path_fails_before_the_run(tmp_path: Path) -> None:
    started = time.monotonic()
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), "--json", str(tmp_path / "nope" / "r.json"))
    assert result.returncode == 2 and time.monotonic() - started < 5  # no replay ran first
    assert result.stderr.splitlines() == [f"voicerelay: error: cannot write --json {tmp_path / 'nope' / 'r.json'}: "
                                          f"no such folder {tmp_path / 'nope'}"]


async def test_ctrl_c_writes_the_report_of_what_finished_and_exits_130(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("OPENAI_API_KEY", None)
    long_input = tmp_path / "two.wav"  # an utterance, then a long pause: interrupted during the pause
    soundfile.write(long_input, np.concatenate([read_recording("hello_there"), room_noise(20_000)]), 24_000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "replay", str(long_input), "--json", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    async with asyncio.timeout(30):
        while b"turn 1:" not in await proc.stdout.readline():
            pass
    proc.send_signal(2)
    async with asyncio.timeout(10):
        code = await proc.wait()
    stderr = (await proc.stderr.read()).decode()
    assert code == 130 and "Traceback" not in stderr, stderr
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and data["turns"][0]["user"] == "hello there"


THREE = ["hello_there", "what_is_your_name", "how_are_you"]


def _three_utterances(tmp_path: Path) -> Path:
    """A WAV of 300 ms of room noise, then the recordings of ``THREE``, each followed by 800 ms of it."""
    parts = [room_noise(300)]
    for stem in THREE:
        parts += [read_recording(stem), room_noise(800)]
    path = tmp_path / "three.wav"
    soundfile.write(path, np.concatenate(parts), 24_000, subtype="PCM_16")
    return path


async def test_several_utterances_at_full_speed_each_get_their_own_answer_in_order(backend: BackendServer,
                                                                                    tmp_path: Path) -> None:
    stems = THREE
    path = _three_utterances(tmp_path)
    report = tmp_path / "r.json"
    code, out, err = await run_replay(path, backend, speed=0, json_path=str(report))
    assert code == 0, err
    turns = json.loads(report.read_text())["turns"]
    expected = [RECORDING_SENTENCES[stem] for stem in stems]
    assert [t["user"] for t in turns] == expected
    assert all(t["status"] == "completed" and t["assistant"] for t in turns), turns
    users = [line.split("user  ", 1)[1] for line in out.splitlines() if line.lstrip().startswith("user  ")]
    assert users == expected


async def test_a_recycle_loses_no_utterance_and_invents_none(engines: Engines, tmp_path: Path) -> None:
    stems = THREE
    path = _three_utterances(tmp_path)
    report = tmp_path / "r.json"
    started = time.monotonic()
    async with BackendServer(port=0, engines=engines, max_session_seconds=1.5) as server:
        # paced (3x real time: about 2.5 s), so that the 1.5 s session ends mid-replay on any machine
        # (at full speed a quiet machine replays the three utterances before the first cap)
        code, out, err = await run_replay(path, server, speed=3, json_path=str(report), timeout=20.0)
    assert code == 0, err
    assert time.monotonic() - started < 15  # no wait for replies that never come
    data = json.loads(report.read_text())
    assert data["recycles"] >= 1
    assert [t["user"] for t in data["turns"]] == [RECORDING_SENTENCES[stem] for stem in stems]
    assert "did not hear" not in out


async def test_a_backend_url_without_a_path_gets_the_realtime_path(backend: BackendServer) -> None:
    root = await asyncio.to_thread(cli, "replay", str(RECORDINGS / "hello_there.wav"), "--speed", "0", "--backend",
                                   f"ws://127.0.0.1:{backend.port}")
    assert root.returncode == 0, root.stderr
    elsewhere = await asyncio.to_thread(cli, "replay", str(RECORDINGS / "hello_there.wav"), "--backend",
                                        f"ws://127.0.0.1:{backend.port}/realtime")
    assert elsewhere.returncode == 1
    assert "HTTP 404 (Realtime servers listen at /v1/realtime: is the URL's path right?)" in elsewhere.stderr


def test_several_files_and_globs_end_with_one_summary_table(tmp_path: Path) -> None:
    report = tmp_path / "all.json"
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), str(RECORDINGS / "what_*.wav"), "--speed", "0",
                 "--json", str(report), "--expect", "hello|name|can")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("file ")))
    assert lines[header].split() == ["file", "turns", "transcripts", "match", "latency", "cost", "result"]
    rows = [line.split() for line in lines[header + 1:]]
    assert [row[0] for row in rows] == [str(RECORDINGS / f"{stem}.wav") for stem in
                                        ("hello_there", "what_can_you_do", "what_is_your_name")]
    assert all(row[1] == "1" and row[2] == "yes" and row[-1] == "passed" for row in rows), rows
    data = json.loads(report.read_text())
    assert [f["turns"][0]["user"] for f in data["files"]] == ["hello there", "what can you do", "what is your name"]


def test_one_bad_file_among_several_fails_the_run_and_the_rest_still_runs(tmp_path: Path) -> None:
    (tmp_path / "notes.wav").write_text("not audio")
    result = cli("replay", str(tmp_path / "notes.wav"), str(RECORDINGS / "hello_there.wav"), "--speed", "0",
                 "--expect", "nothing like this")
    assert result.returncode == 2, result.stderr  # unusable input outranks a failed file
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("/", "file"))}
    assert "unusable: cannot read" in rows[str(tmp_path / "notes.wav")]
    assert rows[str(RECORDINGS / "hello_there.wav")].split()[-1] == "failed"
    only_failed = cli("replay", str(RECORDINGS / "hello_there.wav"), str(RECORDINGS / "how_are_you.wav"),
                      "--speed", "0", "--expect", "hello")
    assert only_failed.returncode == 1, only_failed.stderr  # how_are_you does not say hello


def test_several_files_refuse_a_single_output_and_an_empty_glob(tmp_path: Path) -> None:
    wav = str(RECORDINGS / "hello_there.wav")
    result = cli("replay", wav, wav, "--out", str(tmp_path / "x.wav"))
    assert result.returncode == 2 and "--out takes one input, not 2" in result.stderr
    result = cli("replay", str(tmp_path / "*.wav"))
    assert result.returncode == 2 and result.stderr.strip() == f"voicerelay: error: no file matches {tmp_path}/*.wav"


def test_the_progress_bar_in_a_terminal_never_shares_a_line_with_a_transcript(tmp_path: Path) -> None:
    from .tui.terminal import Terminal

    long_input = tmp_path / "long.wav"  # >= 10 s: the bar is drawn
    soundfile.write(long_input, np.concatenate([room_noise(500), read_recording("hello_there"), room_noise(4000),
                                                read_recording("what_is_your_name"), room_noise(4000)]), 24_000)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    with Terminal([sys.executable, "-m", "voicerelay", "replay", str(long_input)], env, size=(100, 30)) as term:
        term.wait_for(r"replaying .* \d+/12 s", timeout=20)  # the bar is up
        assert term.exit_code(timeout=60) == 0
        screen = term.after_exit()
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    assert not [line for line in lines if "replaying" in line], lines  # gone once the input ended
    assert lines[-6:] == ["     user  hello there",
                          "assistant  Hello! I am the voicerelay test assistant. How can I help?",
                          lines[-4], "     user  what is your name",
                          "assistant  My name is voicerelay. I am an offline test assistant.", lines[-1]]
    assert lines[-4].lstrip().startswith("turn 1: completed") and lines[-1].lstrip().startswith("turn 2: completed")


async def test_barge_in_during_a_replay_truncates_at_what_the_file_sink_took(engines: Engines, tmp_path: Path) -> None:
    from .barge_in import assert_truncate_is_what_was_heard

    # the second utterance starts while the first reply still streams (pace 0.5: 4 s of reply take 8 s)
    pcm = np.concatenate([room_noise(300), read_recording("what_can_you_do"), room_noise(1500),
                          read_recording("hello_there"), room_noise(1000)])
    path = tmp_path / "talk_over.wav"
    soundfile.write(path, pcm, 24_000, subtype="PCM_16")
    folder = tmp_path / "rec"
    async with BackendServer(port=0, engines=engines, pace=0.5) as slow:
        code, out, err = await run_replay(path, slow, speed=1.0, record=folder, timeout=20.0)
    assert code == 0, err
    events = [json.loads(line)["event"] for line in (folder / "session.jsonl").read_text().splitlines()[1:]]
    cut = next(i for i, e in enumerate(events) if e["type"] == "conversation.item.truncate")
    truncate = events[cut]
    received = sum(e["delta"]["bytes"] for e in events[:cut]
                   if e["type"] == "response.output_audio.delta" and e["item_id"] == truncate["item_id"]) // 48
    assert received > 500  # really cut in the middle
    # a file sink (or none) takes every delta the moment it arrives: what was received was "played"
    assert_truncate_is_what_was_heard(truncate["audio_end_ms"], received, received)


# ------------------------------------------------------------------------------------------- cost


def priced(turn: dict[str, Any], model: str = "gpt-realtime") -> float:
    """The turn's dollars, computed here from its usage and the shipped table's prices."""
    from voicerelay.cost import load_prices

    prices = load_prices(env={}).find(model)
    assert prices is not None
    inp, out = turn["usage"]["input_token_details"], turn["usage"]["output_token_details"]
    assert inp["cached_tokens"] == 0  # (the embedded backend caches nothing)
    return (inp["text_tokens"] * prices.text_input + inp["audio_tokens"] * prices.audio_input
            + out["text_tokens"] * prices.text_output + out["audio_tokens"] * prices.audio_output) / 1e6


def test_the_report_and_the_summary_price_every_turn_as_an_estimate_on_the_embedded_backend(tmp_path: Path) -> None:
    report = tmp_path / "all.json"
    result = cli("replay", str(RECORDINGS / "hello_there.wav"), str(RECORDINGS / "what_can_you_do.wav"),
                 "--speed", "0", "--json", str(report))
    assert result.returncode == 0, result.stderr
    files = json.loads(report.read_text())["files"]
    for data in files:
        assert data["backend"].startswith("embedded backend")
        [turn] = data["turns"]
        assert turn["cost"]["estimate"] is True and "estimate" in turn["cost"]["note"]
        assert turn["cost"]["usd"] == round(priced(turn), 6) and turn["cost"]["usd"] > 0
        total = data["cost"]
        assert total["model"] == "gpt-realtime" and total["estimate"] is True
        assert total["usd"] == turn["cost"]["usd"]  # one turn: the session costs what it cost
        assert total["prices"]["file"].endswith("prices.toml") and total["prices"]["date"]
    lines = result.stdout.splitlines()
    turn_lines = [line for line in lines if "turn 1: completed" in line]
    assert [line.split(", ")[-1] for line in turn_lines] == [
        f"~${f['cost']['usd']:.4f} (estimate)" for f in files], turn_lines
    header = lines.index(next(line for line in lines if line.startswith("file ")))
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [row[-2] for row in rows] == [f"~${f['cost']['usd']:.4f}" for f in files], rows
    assert "cost ~ is an estimate: the embedded backend's usage figures are estimates" in lines[header - 2]


def test_an_unknown_model_costs_unknown_and_a_users_table_prices_it(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    unknown = cli("replay", str(RECORDINGS / "hello_there.wav"), "--speed", "0", "--model", "house-model",
                  "--json", str(report))
    assert unknown.returncode == 0, unknown.stderr
    data = json.loads(report.read_text())
    assert data["cost"]["usd"] is None and data["turns"][0]["cost"]["usd"] is None
    assert data["cost"]["note"] == "model house-model is not in the price table"
    assert "cost unknown (model house-model is not in the price table)" in unknown.stdout
    table = tmp_path / "mine.toml"
    table.write_text('date = "2030-01-01"\nsource = "a test"\n[models.house-model]\ntext_input = 1\n'
                     'text_cached_input = 0\ntext_output = 2\naudio_input = 3\naudio_cached_input = 0\n'
                     'audio_output = 4\n')
    mine = cli("replay", str(RECORDINGS / "hello_there.wav"), "--speed", "0", "--model", "house-model",
               "--json", str(report), env={"VOICERELAY_PRICES": str(table)})
    assert mine.returncode == 0, mine.stderr
    data = json.loads(report.read_text())
    usage = data["turns"][0]["usage"]
    expected = (usage["input_token_details"]["text_tokens"] * 1 + usage["input_token_details"]["audio_tokens"] * 3
                + usage["output_token_details"]["text_tokens"] * 2
                + usage["output_token_details"]["audio_tokens"] * 4) / 1e6
    assert data["cost"]["usd"] == round(expected, 6) > 0
    assert data["cost"]["prices"] == {"date": "2030-01-01", "source": "a test", "file": str(table)}


def test_a_broken_price_table_is_one_line_and_exit_2_before_the_run(tmp_path: Path) -> None:
    table = tmp_path / "prices.toml"
    table.write_text('date = "2030-01-01"\nsource = "x"\n[models.m]\ntext_input = 1\n')
    for files in ([RECORDINGS / "hello_there.wav"], [RECORDINGS / "hello_there.wav", RECORDINGS / "how_are_you.wav"]):
        result = cli("replay", *map(str, files), "--speed", "0", env={"VOICERELAY_PRICES": str(table)})
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == (f"voicerelay: error: price table {table} (VOICERELAY_PRICES): "
                                         "models.m: 'text_cached_input' is missing")
        assert "user" not in result.stdout  # nothing was replayed


# ------------------------------------------------------------------------------------------- speed 0


async def test_at_speed_0_replay_ends_as_soon_as_every_utterance_is_answered(backend: BackendServer,
                                                                              tmp_path: Path) -> None:
    stems = THREE
    path = _three_utterances(tmp_path)
    folder = tmp_path / "rec"
    started = time.monotonic()
    code, _, err = await run_replay(path, backend, speed=0, record=folder, json_path=str(tmp_path / "r.json"))
    ended = time.monotonic()
    assert code == 0, err
    turns = json.loads((tmp_path / "r.json").read_text())["turns"]
    assert [t["user"] for t in turns] == [RECORDING_SENTENCES[stem] for stem in stems]
    assert all(t["status"] == "completed" and t["assistant"] for t in turns), turns
    lines = [json.loads(line) for line in (folder / "session.jsonl").read_text().splitlines()[1:]]
    last_answer = max(line["t"] for line in lines if line["event"]["type"] in
                      ("response.done", "conversation.item.input_audio_transcription.completed"))
    # the recording's clock starts just after replay() did: what follows the last answer is the
    # session's closing, not 300 ms of waiting for something more (as before)
    assert (ended - started) - last_answer < 0.25, (ended - started, last_answer)
    appends = [line["event"] for line in lines if line["event"]["type"] == "input_audio_buffer.append"]
    assert len(appends) < 20  # up to 1 s each, not one per 20 ms frame (about 375 here)


def test_at_speed_0_the_audio_sent_past_an_utterances_end_cannot_start_the_next_turn() -> None:
    """replay looks for utterance ends a piece at a time and sends the piece whole: what follows the
    end in it must be too short to hold the voiced frames that start a turn (the next utterance
    would interrupt this one's reply)."""
    from voicerelay import replay as replay_module
    from voicerelay.backend import vad

    assert replay_module.PIECE_MS % vad.FRAME_MS == 0
    assert replay_module.PIECE_MS - vad.FRAME_MS < vad.START_FRAMES * vad.FRAME_MS


# ------------------------------------------------------------------------------------------- --jobs


def _blocks(stdout: str) -> list[tuple[str, list[str]]]:
    """(file, its lines) per '── file' heading, in the order printed."""
    blocks: list[tuple[str, list[str]]] = []
    for line in stdout.splitlines():
        if line.startswith("── "):
            blocks.append((line[3:], []))
        elif blocks and line.strip():
            blocks[-1][1].append(line)
    return blocks


def _conversation(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(t["user"], t["assistant"], t["status"]) for t in report["turns"]]


def test_jobs_keep_the_input_order_and_give_what_one_job_gives(tmp_path: Path) -> None:
    stems = ["weather_in_paris", "hello_there", "what_can_you_do", "how_are_you", "what_is_your_name"]
    files = [str(RECORDINGS / f"{stem}.wav") for stem in stems]
    runs = {}
    for jobs in ("1", "2"):
        report = tmp_path / f"jobs{jobs}.json"
        result = cli("replay", *files, "--speed", "0", "--jobs", jobs, "--json", str(report), timeout=120)
        assert result.returncode == 0, result.stderr
        blocks = _blocks(result.stdout)
        assert [name for name, _ in blocks] == files, result.stdout
        for (name, lines), stem in zip(blocks, stems):  # each file's lines under its own heading
            assert lines[0] == f"     user  {RECORDING_SENTENCES[stem]}", (name, lines)
        runs[jobs] = [_conversation(f) for f in json.loads(report.read_text())["files"]]
        assert [f[0][0] for f in runs[jobs]] == [RECORDING_SENTENCES[stem] for stem in stems]
    assert runs["2"] == runs["1"]


def test_a_bad_file_among_good_ones_with_jobs_is_its_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    files = [str(RECORDINGS / "hello_there.wav"), str(bad), str(RECORDINGS / "how_are_you.wav")]
    result = cli("replay", *files, "--speed", "0", "--jobs", "2", timeout=120)
    assert result.returncode == 2, result.stderr  # unusable input, per the README's table
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("voicerelay: error: ") and str(bad) in errors[0], errors
    assert "Traceback" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("/", "file"))}
    assert "unusable: cannot read" in rows[str(bad)]
    assert rows[files[0]].split()[-1] == rows[files[2]].split()[-1] == "passed"
    assert [name for name, _ in _blocks(result.stdout)] == files


def _workers_of(pid: int) -> list[int]:
    """The worker processes of a voicerelay process (its spawned children), oldest first."""
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(child))
    return sorted(found)


async def test_a_worker_that_dies_fails_only_its_own_file(tmp_path: Path) -> None:
    import signal

    long_input = tmp_path / "long.wav"  # at speed 1 it takes 12 s: its worker is killed meanwhile
    soundfile.write(long_input, np.concatenate([read_recording("hello_there"), room_noise(10_000)]), 24_000)
    files = [str(long_input), str(RECORDINGS / "what_is_your_name.wav"), str(RECORDINGS / "how_are_you.wav")]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "replay", *files, "--jobs", "2", "--json", str(tmp_path / "r.json"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    async with asyncio.timeout(30):
        while len(workers := _workers_of(proc.pid)) < 2:
            await asyncio.sleep(0.1)
    await asyncio.sleep(3)  # long.wav's replay is under way in the first worker
    os.kill(workers[0], signal.SIGKILL)
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    out, err = stdout.decode(), stderr.decode()
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [(f"voicerelay: error: {long_input}: the replay failed: its worker process "
                                         "was killed by SIGKILL")], err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("/")}
    assert rows[files[1]][-1] == rows[files[2]][-1] == "passed", out
    reports = json.loads((tmp_path / "r.json").read_text())["files"]
    assert [r["turns"][0]["user"] for r in reports] == ["what is your name", "how are you today"]
    assert _wait_gone([str(w) for w in workers]) == []


@pytest.mark.parametrize("who", ["process group", "parent only"])
async def test_ctrl_c_with_jobs_exits_130_and_leaves_no_process(tmp_path: Path, who: str) -> None:
    import signal

    long_input = tmp_path / "long.wav"
    soundfile.write(long_input, np.concatenate([read_recording("hello_there"), room_noise(20_000)]), 24_000)
    files = [str(long_input), str(long_input), str(RECORDINGS / "how_are_you.wav")]
    report = tmp_path / "r.json"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicerelay", "replay", *files, "--jobs", "2", "--json", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    async with asyncio.timeout(30):
        while len(workers := _workers_of(proc.pid)) < 2:
            await asyncio.sleep(0.1)
    await asyncio.sleep(7)  # both replays are under way, their first turn answered (21.7 s of input each)
    everyone = _children(proc.pid)  # (multiprocessing's resource tracker too)
    if who == "process group":  # what a terminal's Ctrl-C does
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(20):
        _, stderr = await proc.communicate()
    err = stderr.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert {str(w) for w in workers} <= set(everyone) and _wait_gone(everyone) == []
    data = json.loads(report.read_text())["files"]
    assert len(data) == 2 and all(f["interrupted"] for f in data)  # the third file never started
    assert all(f["turns"][0]["user"] == "hello there" for f in data)  # what finished before Ctrl-C
