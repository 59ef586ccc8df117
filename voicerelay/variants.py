"""A/B replay (``voicerelay replay REC --vary KEY=V1,V2 ...``): one input replayed under every
combination of settings, ``--jobs`` at a time in worker processes (one per core by default: each
runs its own speech engines), summed up in one table.

Each variant is an ordinary replay (:func:`voicerelay.replay.replay`) with its own embedded backend
(or upstream) and its own recording in a temporary folder, which the protocol linter then reads,
in a worker process of :func:`voicerelay.workers.run_in_processes`.
The table: turns detected, interruptions (turns that ended cancelled or interrupted), first-audio
latency p50/p95, user transcripts that differ from the first variant's, lint findings, cost.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.text import Text

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, UpstreamError, UsageError
from .protocol.config import ConfigError, RealtimeConfig

#: What ``--vary`` may name: configuration keys, and the turn-detection parameters by their own name.
VARY_KEYS = {"turn_detection": "turn_detection_mode", "turn_detection_mode": "turn_detection_mode",
             "voice": "voice", "instructions": "instructions", "model": "model",
             "transcription_model": "transcription_model", "max_output_tokens": "max_output_tokens"}
TD_PARAMS = ("threshold", "prefix_padding_ms", "silence_duration_ms")
COLUMNS = ("variant", "turns", "interruptions", "first audio p50", "p95", "transcripts differ", "lint", "cost",
           "result")


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_vary(specs: list[str], base: RealtimeConfig) -> list[tuple[dict[str, Any], RealtimeConfig]]:
    """``["turn_detection=normal,aggressive", "silence_duration_ms=300,500"]`` -> every combination,
    in order, as (what varies, the configuration); an unusable spec is a :class:`UsageError`."""
    axes: list[tuple[str, list[Any]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        choices = [_value(v.strip()) for v in values.split(",") if v.strip()]
        if not sep or not choices:
            raise UsageError(f"--vary takes KEY=VALUE,VALUE...: not {spec!r}")
        if key not in VARY_KEYS and key not in TD_PARAMS:
            raise UsageError(f"--vary cannot vary {key!r} (it can: {', '.join(sorted([*VARY_KEYS, *TD_PARAMS]))})")
        if any(k == key for k, _ in axes):
            raise UsageError(f"--vary names {key} twice: give all its values in one --vary")
        axes.append((key, choices))
    variants = []
    for combination in itertools.product(*(values for _, values in axes)):
        vary = {key: value for (key, _), value in zip(axes, combination)}
        config: dict[str, Any] = {}
        params = dict(base.turn_detection_params)
        for key, value in vary.items():
            if key in TD_PARAMS:
                params[key] = value
            else:
                config[VARY_KEYS[key]] = value
        if params != dict(base.turn_detection_params):
            config["turn_detection_params"] = params
        try:
            variants.append((vary, RealtimeConfig.from_mapping(config, base)))
        except ConfigError as exc:
            raise UsageError(f"--vary {', '.join(f'{k}={v}' for k, v in vary.items())}: {exc}") from None
    return variants


def _run_variant(job: tuple[Path, dict[str, Any], Any]) -> dict[str, Any]:
    """In a worker process: one variant's replay, recorded into a temporary folder that the linter reads."""
    from .lint import lint_recording
    from .replay import replay
    from .workers import run_interruptible

    path, vary, options = job
    with tempfile.TemporaryDirectory(prefix="voicerelay-vary-") as tmp:
        folder = Path(tmp) / "rec"
        reports: list[dict[str, Any]] = []
        one = dataclasses.replace(options, path=path, record=folder, json_path=None, progress=False, expect=None,
                                  compare=False)
        quiet = Console(file=io.StringIO())
        failure = ""
        try:
            code = run_interruptible(replay(one, quiet, quiet, reports=reports))
            if code == EXIT_INTERRUPTED:
                failure = "interrupted"
        except UpstreamError as exc:
            failure = f"upstream failed: {exc}"
        findings = len(lint_recording(folder).findings) if (folder / "session.jsonl").exists() else None
        return {"vary": vary, "report": reports[0] if reports else None, "lint_findings": findings,
                "failure": failure}


async def replay_variants(path: Path, specs: list[str], options: Any, console: Console, err: Console,
                          jobs: int | None = None) -> int:
    """Replay ``path`` under every variant, ``jobs`` at a time in worker processes (default: one per
    core); print the table (and ``--json``); the exit code."""
    from .replay import _write_json, default_jobs
    from .workers import NOT_RUN, Died, Raised, run_in_processes

    if options.out is not None or options.record is not None:
        raise UsageError("--out and --record take one replay, not one per --vary variant")
    variants = parse_vary(specs, options.config)
    rows: list[tuple[str, ...]] = []
    jobs = default_jobs(len(variants)) if jobs is None else max(1, min(jobs, len(variants)))
    err.print(f"replaying {path} under {len(variants)} variants, {jobs} at a time…", highlight=False)
    jobs_of = [(path, vary, dataclasses.replace(options, config=config)) for vary, config in variants]
    outcomes, interrupted = await run_in_processes(_run_variant, jobs_of, jobs)
    for outcome in outcomes:  # unusable input is every variant's: one line, exit 2, as without --vary
        if isinstance(outcome, Raised) and isinstance(outcome.error, UsageError):
            raise outcome.error
    results: list[dict[str, Any]] = []
    for (vary, _), outcome in zip(variants, outcomes):
        if outcome is NOT_RUN:
            continue
        if isinstance(outcome, Died | Raised):
            failure = "interrupted" if outcome.interrupted else outcome.describe()
            outcome = {"vary": vary, "report": None, "lint_findings": None, "failure": failure}
        results.append(outcome)
    first_users: list[str] | None = None
    for result in results:
        report = result["report"] or {"turns": []}
        turns = report["turns"]
        users = [t["user"] for t in turns]
        if first_users is None:
            first_users = users
        differ = sum(a != b for a, b in itertools.zip_longest(users, first_users, fillvalue=None))
        latencies = [t["latency_ms"]["first_audio"] for t in turns if t["latency_ms"]["first_audio"] is not None]
        p50, p95 = (f"{np.percentile(latencies, q):.0f} ms" for q in (50, 95)) if latencies else ("-", "-")
        cost = report.get("cost") or {}
        usd = cost.get("usd")
        dollars = "-" if usd is None else f"{'~' if cost.get('estimate') else ''}${usd:.4f}"
        result.update(turns=len(turns), interruptions=sum(t["status"] in ("cancelled", "interrupted") for t in turns),
                      transcripts_differ=differ)
        rows.append((", ".join(f"{k}={v}" for k, v in result["vary"].items()), str(len(turns)),
                     str(result["interruptions"]), p50, p95, str(differ),
                     "-" if result["lint_findings"] is None else str(result["lint_findings"]), dollars,
                     result["failure"] or "done"))
    _print_table(rows, console)
    if options.json_path is not None:
        _write_json(options.json_path, {"input": str(path), "variants": results})
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(r["failure"] for r in results) else 0


def _print_table(rows: list[tuple[str, ...]], console: Console) -> None:
    """One line per variant, columns aligned, never wrapped."""
    widths = [max(len(cells[i]) for cells in [COLUMNS, *rows]) for i in range(len(COLUMNS) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + "  "

    console.print(Text(line(COLUMNS) + COLUMNS[-1], style="bold"))
    for row in rows:
        console.print(Text(line(row[:-1])) + Text(row[-1], style="green" if row[-1] == "done" else "red"))


__all__ = ["parse_vary", "replay_variants"]
