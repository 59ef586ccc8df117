"""The command line as a user meets it: help, start-up, one-line errors."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

HEAVY = ["numpy", "websockets", "socketio", "textual", "sounddevice", "pocketsphinx", "soxr", "openai"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "voicerelay", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_commands_and_loads_no_heavy_library() -> None:
    code = ("import sys, runpy; sys.argv = ['voicerelay', '--help']\n"
            "try:\n    runpy.run_module('voicerelay', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            f"import json; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "backend" in out.stdout
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == []


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and re.fullmatch(r"voicerelay \d+\.\d+\.\d+\n", result.stdout)


def test_backend_serves_and_stops_on_ctrl_c() -> None:
    with subprocess.Popen([sys.executable, "-m", "voicerelay", "backend", "--port", "0"],
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"}) as proc:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        url = None
        while time.monotonic() < deadline and url is None:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"ws://127\.0\.0\.1:(\d+)/v1/realtime", line)
            url = match and match.group(0)
        assert url, "the backend never printed its URL"
        port = int(url.split(":")[2].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        proc.send_signal(2)
        assert proc.wait(timeout=5) == 0
        assert "Traceback" not in proc.stderr.read()


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run("backend", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"voicerelay: error: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_unknown_option_is_a_usage_error() -> None:
    result = run("backend", "--nope")
    assert result.returncode == 2 and "No such option" in result.stderr


def test_inspect_needs_an_http_url() -> None:
    result = run("inspect", "ws://127.0.0.1:1")
    assert result.returncode == 2 and "http(s)://" in result.stderr


def test_backend_stops_on_sigterm_and_leaves_no_workers() -> None:
    with subprocess.Popen([sys.executable, "-m", "voicerelay", "backend", "--port", "0"],
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"}) as proc:
        assert proc.stderr is not None
        while "Ctrl-C stops it" not in (line := proc.stderr.readline()):
            assert line, "the backend exited early"
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children  # its speech-recognition workers
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stderr.read()
    deadline = time.monotonic() + 5
    while (alive := [pid for pid in children if os.path.exists(f"/proc/{pid}")]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive == [], [open(f"/proc/{pid}/cmdline").read() for pid in alive]


def _readme_exit_codes() -> dict[str, set[int]]:
    """The README's exit-code table: command -> the codes it lists (cells that are not '—')."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    header = next(line for line in section.splitlines() if line.startswith("| command"))
    codes = [int(cell) for cell in header.strip("|").split("|")[1:]]
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[0].strip("`")] = {code for code, cell in zip(codes, cells[1:]) if cell != "—"}
    return table


def test_every_command_states_the_exit_codes_of_the_readme_table() -> None:
    table = _readme_exit_codes()
    assert set(table) == {"replay", "talk", "serve", "backend", "inspect", "devices", "lint", "proxy"}
    for command, codes in table.items():
        text = " ".join(run(command, "--help").stdout.split())
        stated = text.split("Exit codes:", 1)[1] if "Exit codes:" in text else ""
        assert stated, f"{command} --help states no exit codes"
        sentence = stated.split("╭")[0]  # up to the first panel of options
        found = {int(code) for code in re.findall(r"(?:^|;)\s*(\d+)\s", sentence)}
        assert found == codes, (command, found, codes)


def test_usage_mistakes_are_one_line_and_exit_2_in_every_command() -> None:
    for args in (["replay", "x.wav", "--speed", "abc"], ["replay", "x.wav", "--speed", "-1"],
                 ["replay", "x.wav", "--jobs", "0"], ["talk", "--nope"],
                 ["serve", "--port", "99999"], ["backend", "--port", "x"], ["replay"], ["inspect"]):
        result = run(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("voicerelay: error: ") and lines[0].endswith("--help)"), (args, lines)


def test_help_shows_flags_as_flags_and_offers_completion() -> None:
    root = run("--help")
    assert "--install-completion" in root.stdout and "<bool>" not in root.stdout
    for command in ("replay", "talk", "serve", "backend", "inspect", "devices", "proxy"):
        text = run(command, "--help").stdout
        assert "<bool>" not in text and "<str>" not in text.split("Options")[-1], command
    replay_help = run("replay", "--help").stdout
    assert re.search(r"--json\s+FILE", replay_help) and re.search(r"--compare\s{2,}With a recorded", replay_help)


def test_shared_options_have_one_wording() -> None:
    def option_line(command: str, option: str) -> str:
        text = run(command, "--help").stdout
        return next(" ".join(line.split()) for line in text.splitlines() if f" {option} " in line)

    for option in ("--port", "--host", "--log-level"):
        serve_line, backend_line = option_line("serve", option), option_line("backend", option)
        assert serve_line.split("[default")[0] == backend_line.split("[default")[0], option


def _children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()


def _wait_gone(pids: list[str], timeout: float = 5) -> list[str]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if os.path.exists(f"/proc/{p}")]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _started_backend() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "voicerelay", "backend", "--port", "0"], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "200"}, start_new_session=True)
    assert proc.stderr is not None
    while "Ctrl-C stops it" not in (line := proc.stderr.readline()):
        assert line, "the backend exited early"
    return proc


def test_ctrl_c_to_the_process_group_stops_quietly_with_no_worker_traceback() -> None:
    with _started_backend() as proc:
        workers = _children(proc.pid)
        assert workers
        os.killpg(proc.pid, 2)  # what a terminal's Ctrl-C does: SIGINT to every process of the group
        assert proc.wait(timeout=10) in (0, 130)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert _wait_gone(workers) == []


def test_workers_go_with_a_killed_backend() -> None:
    with _started_backend() as proc:
        workers = _children(proc.pid)
        assert workers
        proc.kill()  # SIGKILL: no chance to stop its pool
        proc.wait(timeout=5)
    assert _wait_gone(workers, timeout=5) == [], "recognition workers outlived their backend"


async def test_ctrl_c_on_serve_ends_the_sessions_and_leaves_no_worker_traceback() -> None:
    import asyncio

    from .gateway.conftest import Browser
    from .gateway.test_serve_cli import serving_cli

    async with serving_cli(own_group=True) as (proc, url):
        assert proc.stderr is not None
        browser = await Browser().connect(url)
        await browser.start()  # the embedded backend starts: its workers are spawned and still starting up
        workers = [pid for pid in _children(proc.pid)]
        await asyncio.sleep(0.4)  # they are importing numpy and pocketsphinx now
        os.killpg(proc.pid, 2)  # a terminal's Ctrl-C to the whole process group
        assert (await browser.wait_for("session_ended", timeout=10))["status"] == "shutdown"
        assert await asyncio.wait_for(proc.wait(), 15) in (0, 130)
        await browser.close()
        rest = (await proc.stderr.read()).decode()
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    assert _wait_gone(workers) == []
