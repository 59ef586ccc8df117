"""What the live protocol linter costs per relayed chunk, as ``serve`` and the proxy feed it.

    python benchmarks/lint_cost.py                      # 5-s and 60-s sessions, 20 of each
    python benchmarks/lint_cost.py --seconds 5,30 --sessions 50

Each session is a fresh :class:`voicerelay.protocol.lint.StreamLinter` fed, per 40 ms chunk, what
a gateway session feeds it: one ``input_audio_buffer.append`` up (1920 bytes of PCM16 room-level
noise as base64, full band, so VR108 judges it and finds nothing) and one
``response.output_audio.delta`` down. Printed per session length: CPU microseconds per chunk
(``time.process_time`` over all sessions / chunks) and the share of appends whose base64 the
linter decoded for VR108. A figure counts only when the linter did its work: every session
decoded audio to judge and found nothing in full-band audio (else the benchmark says so and
exits 1).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time

import numpy as np

from voicerelay.protocol.lint import StreamLinter

CHUNK_S = 0.04
CHUNK_SAMPLES = 960
CREATED = {"type": "session.created", "session": {"type": "realtime",
                                                  "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}}


def run(seconds: float, sessions: int, chunks: list[str]) -> tuple[float, float, int]:
    """(µs per chunk, share of appends decoded, sessions that went wrong)."""
    n = int(seconds / CHUNK_S)
    cpu = decoded = 0.0
    wrong = 0
    for _ in range(sessions):
        lint = StreamLinter()
        start = time.process_time()
        lint.feed("down", 0.0, CREATED)
        lint.feed("down", 0.0, {"type": "response.created", "response": {"id": "resp_1"}})
        for i in range(n):
            t = i * CHUNK_S
            lint.feed("up", t, {"type": "input_audio_buffer.append", "audio": chunks[i % len(chunks)]})
            lint.feed("down", t, {"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_1",
                                  "output_index": 0, "content_index": 0, "delta": chunks[i % len(chunks)]})
        cpu += time.process_time() - start
        decoded += lint.decoded / n
        wrong += lint.count > 0 or lint.decoded == 0
    return cpu / (sessions * n) * 1e6, decoded / sessions, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", default="5,60", help="session lengths, comma-separated (default 5,60)")
    parser.add_argument("--sessions", type=int, default=20, help="sessions per length (default 20)")
    args = parser.parse_args()
    try:
        lengths = [float(s) for s in args.seconds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seconds takes numbers, comma-separated, not {args.seconds!r}")
    if not lengths or min(lengths) < 1 or args.sessions < 1:
        parser.error("--seconds needs lengths of at least 1 s and --sessions at least 1")
    rng = np.random.default_rng(1)
    chunks = [base64.b64encode(rng.normal(0, 3000, CHUNK_SAMPLES).astype("<i2").tobytes()).decode()
              for _ in range(50)]
    print(f"live linter, per 40 ms chunk (one append up, one audio delta down), {args.sessions} sessions each")
    failed = False
    for seconds in lengths:
        us, decoded, wrong = run(seconds, args.sessions, chunks)
        verdict = "ok" if not wrong else f"{wrong} sessions decoded nothing or found something: not a figure"
        failed |= bool(wrong)
        print(f"{seconds:6g}-s sessions: {us:5.1f} µs CPU per chunk; appends decoded {decoded:5.1%}; {verdict}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
