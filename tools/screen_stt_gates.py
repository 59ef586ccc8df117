"""Screen the recogniser's decision thresholds and warps offline, over one dump of every path's decode.

``stt.Recognizer.recognize`` chooses among several decodes of an utterance (module doc of
``voicerelay/backend/stt.py``): a first pass (``fwdflat`` off) kept when it is a sentence at
``FIRST_PASS_CONFIDENCE``; the full domain decode kept at ``FALLBACK_CONFIDENCE``; its near miss
(``NEAR_MARGIN``/``NEAR_CONFIDENCE``); the warped second opinion (``SECOND_OPINION_WARPS``); the general
model. This script decodes each utterance ONCE by every one of those paths (and by the warped decoders
without their flat-lexicon pass, a cheaper option), with each path's CPU time, and stores it; then any
combination of thresholds, warps and passes is replayed in milliseconds, with its right intents, its
out-of-domain false accepts and its CPU cost (the sum of the paths it runs, plus the front end).

    # 1. dump (CPU-heavy: run the parts side by side; re-run after the acoustic model changes)
    python tools/screen_stt_gates.py dump --set tuning  --out /tmp/screen/tuning.jsonl --channels 0,6,7 --ood
    python tools/screen_stt_gates.py dump --set tuning-wide --out /tmp/screen/wide-clean.jsonl --channels 0
    python tools/screen_stt_gates.py dump --set tuning-wide --out /tmp/screen/wide-phone.jsonl --channels 6
    python tools/screen_stt_gates.py dump --set bench   --out /tmp/screen/bench.jsonl --channels 0,6,7 --ood
    python tools/screen_stt_gates.py dump --set engines --out /tmp/screen/engines.jsonl
    # 2. replay the grid of rules (seconds)
    python tools/screen_stt_gates.py eval /tmp/screen/*.jsonl

Sets (every utterance made as the benchmarks make theirs):

- ``tuning``: the voices the front end was tuned on (:data:`TUNING`, none of them held out by
  ``benchmarks/stt_channels.py`` nor a backend voice) x the 24 domain sentences x the nine simulated
  channels of ``tests/channels.py``, and ``speech_engines.OUT_OF_DOMAIN`` in the same voices, clean:
  what thresholds are chosen on;
- ``tuning-wide``: :data:`TUNING_WIDE`, the same way (the adapted model hears :data:`TUNING` nearly
  perfectly, so those voices hardly tell rules apart; these are harder);
- ``bench``: ``benchmarks/stt_channels.py --no-pulse --no-browser``'s utterances in its order (per
  channel its held-out voices then its own ones; then its 100 out-of-domain ones): the held-out
  voices are the test set, looked at only to report a choice;
- ``engines``: ``benchmarks/speech_engines.py --accuracy``'s 240 domain and 200 out-of-domain
  utterances in the ten own voices (30 dB SNR).

Each path's decoder hears every utterance of its part in order, while the Recognizer's later paths
hear only what the earlier ones did not keep; pocketsphinx's front end carries its noise estimate
from one utterance to the next (module doc), so a replay can differ from the benchmark by an
utterance or two. The general model is decoded only when the full domain decode is not a sentence
at a confidence of at least :data:`GENERAL_WHEN_BELOW` (a rule that falls back above it is then
reported as lacking the general model's answer).
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import speech_engines
import stt_channels

from tests import channels
from voicerelay.backend import frontend, phrases, responder, stt
from voicerelay.backend.tts import OPENAI_VOICES, Synthesizer

#: (espeak-ng voice, words per minute, pitch): the voices the front end was chosen on (stt_channels'
#: HELD_OUT docs), neither held out nor a backend voice.
TUNING: tuple[tuple[str, int, int], ...] = (
    ("en+Andy", 170, 50),
    ("en-us+Michael", 160, 45),
    ("en+f4", 185, 55),
    ("en-us-nyc+m2", 150, 40),
)
#: The eight voices the second opinion's warps were first chosen on (stt's module doc; neither held out, nor a
#: backend voice, nor in the adaptation data): harder for the adapted model than :data:`TUNING`.
TUNING_WIDE: tuple[tuple[str, int, int], ...] = (
    ("en-gb-x-gbclan+Edward", 160, 40),
    ("en-us+Andrea", 180, 55),
    ("en-gb-x-rp+m2", 170, 45),
    ("en-us+Mike", 150, 50),
    ("en-029+f4", 190, 60),
    ("en-us-nyc+Gene", 160, 45),
    ("en+Robert", 190, 40),
    ("en-gb-x-gbcwmd+Steph", 175, 55),
)
#: Warp factors decoded (the second opinion's candidates).
WARPS: tuple[float, ...] = (0.8, 0.88, 1.12, 1.2)
#: The near-miss rule's n-best depth (the rule stt.py had until 2026-12-07, screened here still).
NBEST = 20
#: The general model decodes an utterance unless its full domain decode is a sentence at least this confident.
GENERAL_WHEN_BELOW = -30.0


@dataclass(frozen=True)
class Item:
    group: str  # tuning / tuning_ood / held / own / ood / engines_in / engines_ood
    channel: str
    voice: str
    text: str
    pcm: np.ndarray


def _items(set_name: str, channel_range: str | None, ood: bool) -> list[Item]:
    texts = tuple(phrases.domain_sentences())
    names = list(channels.SIMULATED)
    if channel_range:  # "0-4", "0,6,7"
        chosen: list[int] = []
        for part in channel_range.split(","):
            low, _, high = part.partition("-")
            chosen += range(int(low), int(high or low) + 1)
        names = [names[index] for index in chosen]
    made: list[Item] = []
    if set_name in ("tuning", "tuning-wide"):
        voices = TUNING if set_name == "tuning" else TUNING_WIDE
        speech = stt_channels.utterances(voices, texts)
        for name in names:
            made += [Item("tuning", name, u.voice, u.text, channels.SIMULATED[name](u.pcm)) for u in speech]
        if ood:
            made += [Item("tuning_ood", "clean", u.voice, u.text, u.pcm)
                     for u in stt_channels.utterances(voices, speech_engines.OUT_OF_DOMAIN)]
    elif set_name == "bench":
        held = stt_channels.utterances(stt_channels.HELD_OUT, texts)
        own = stt_channels.utterances(stt_channels.OWN, texts)
        for name in names:
            made += [Item("held", name, u.voice, u.text, channels.SIMULATED[name](u.pcm)) for u in held]
            made += [Item("own", name, u.voice, u.text, channels.SIMULATED[name](u.pcm)) for u in own]
        if ood:
            made += [Item("ood", "clean", u.voice, u.text, u.pcm) for u in stt_channels.utterances(
                stt_channels.HELD_OUT[:3] + stt_channels.OWN[:2], speech_engines.OUT_OF_DOMAIN)]
    elif set_name == "engines":
        synthesizer = Synthesizer()
        for voice in OPENAI_VOICES:
            made += [Item("engines_in", "clean", voice, text, speech_engines.utterance(synthesizer, text, voice, seed))
                     for seed, text in enumerate(texts)]
        for voice in OPENAI_VOICES:
            made += [Item("engines_ood", "clean", voice, text, speech_engines.utterance(synthesizer, text, voice, seed))
                     for seed, text in enumerate(speech_engines.OUT_OF_DOMAIN)]
    else:
        raise SystemExit(f"unknown set {set_name!r}")
    return made


def _warped(recognizer: stt.Recognizer, flat_pass: bool) -> list:
    decoders = []
    for factor in WARPS:
        decoder = recognizer._new_decoder(flat_pass=flat_pass)
        with stt._warp_lock:
            decoder.config["warp_type"] = "inverse_linear"
            decoder.config["warp_params"] = stt._warp_spelling(factor)
            decoder.reinit_feat()
        decoders.append(decoder)
    return decoders


def _timed_decode(decoder, pcm16k: np.ndarray) -> tuple[str, float, float]:
    start = time.thread_time()
    text, confidence = stt._decode(decoder, pcm16k)
    return text, confidence, time.thread_time() - start


def _near(recognizer: stt.Recognizer, decoder, samples: int) -> tuple[str | None, float | None]:
    """The first sentence among the last decode's n-best and its margin per frame below the best path."""
    best = decoder.hyp()
    frames = max(samples * stt._FRAMES_PER_SECOND // stt._DECODER_RATE, 1)
    for hypothesis in itertools.islice(decoder.nbest(), NBEST):
        if hypothesis is None or best is None:
            continue
        words = " ".join(word for word in hypothesis.hypstr.split() if word not in stt._FILLERS)
        if words in recognizer._sentence_set:
            return words, (best.score - hypothesis.score) / frames
    return None, None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def dump(args: argparse.Namespace) -> None:
    items = _items(args.set, args.channels, args.ood)[: args.limit]
    recognizer = stt.Recognizer()
    first = recognizer._new_decoder(flat_pass=False)
    full = recognizer._new_decoder()
    warp_full = _warped(recognizer, True)
    warp_first = _warped(recognizer, False)
    stt.transcribe_general(items[0].pcm[:1600])  # load the general model before timing anything
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as out:
        for index, item in enumerate(items):
            start = time.thread_time()
            pcm16k = frontend.condition(item.pcm)
            record: dict = {"group": item.group, "channel": item.channel, "voice": item.voice, "text": item.text,
                            "audio": item.pcm.size / stt.INPUT_RATE, "front_cpu": time.thread_time() - start}
            text, confidence, cpu = _timed_decode(first, pcm16k)
            record["first"] = [text, _finite(confidence), cpu]
            text, confidence, cpu = _timed_decode(full, pcm16k)
            start = time.thread_time()
            near, margin = (None, None) if not text or text in recognizer._sentence_set else _near(
                recognizer, full, pcm16k.size)
            record["full"] = [text, _finite(confidence), cpu + time.thread_time() - start, near, margin]
            record["warp_full"] = [list(_timed_decode(d, pcm16k)) for d in warp_full]
            record["warp_first"] = [list(_timed_decode(d, pcm16k)) for d in warp_first]
            for row in record["warp_full"] + record["warp_first"]:
                row[1] = _finite(row[1])
            general = None
            if not (text in recognizer._sentence_set and confidence >= GENERAL_WHEN_BELOW):
                start = time.thread_time()
                general_text = stt._GENERAL.transcribe16k(pcm16k)
                general = [general_text, time.thread_time() - start]
            record["general"] = general
            out.write(json.dumps(record) + "\n")
            out.flush()
            if index % 50 == 0:
                print(f"{args.out}: {index}/{len(items)}", flush=True)


# -- replay ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    first: float | None = -25.0  # first-pass gate; None: no first pass
    full: bool = True  # the full domain decode runs when the first pass does not decide
    fallback: float = -35.0
    near_confidence: float | None = -45.0  # None: no near-miss rule
    near_margin: float = 3.0
    warps: tuple[int, ...] = (0, 1, 2, 3)  # indices into WARPS
    warp_pass: str = "warp_full"  # or warp_first
    warp_confidence: float = -35.0
    # the warps are asked only when the best domain confidence is at least this (None: always)
    warp_min_domain: float | None = None
    # the full decode (and the warps) run only when the first pass's confidence is at least this (None:
    # always); below it, the general model decides at once
    full_min_first: float | None = None

    def label(self) -> str:
        warps = ",".join(f"{WARPS[i]:g}" for i in self.warps) or "none"
        return (f"first {self.first} full {int(self.full)} fb {self.fallback} near {self.near_confidence}/"
                f"{self.near_margin} warps {warps} {self.warp_pass.split('_')[1]} @{self.warp_confidence}"
                + (f" if dom>={self.warp_min_domain}" if self.warp_min_domain is not None else "")
                + (f" full if first>={self.full_min_first}" if self.full_min_first is not None else ""))


def decide(rule: Rule, record: dict, sentences: frozenset[str]) -> tuple[str | None, float, str]:
    """(text, CPU seconds, source) as the Recognizer would with ``rule``; text None when the general model's
    answer is needed and was not dumped."""
    cost = record["front_cpu"]

    def ok(text: str, confidence: float | None, gate: float) -> bool:
        return text in sentences and confidence is not None and confidence >= gate

    text, confidence, cpu = record["first"]
    domain_confidence = confidence
    if rule.first is not None:
        cost += cpu
        if ok(text, confidence, rule.first):
            return text, cost, "first"
    skip = rule.full_min_first is not None and (confidence is None or confidence < rule.full_min_first)
    if skip:
        pass
    elif rule.full:
        text, confidence, cpu, near, margin = record["full"]
        cost += cpu
        domain_confidence = confidence
        if ok(text, confidence, rule.fallback):
            return text, cost, "full"
        if (rule.near_confidence is not None and near is not None and confidence is not None
                and confidence >= rule.near_confidence and margin <= rule.near_margin):
            return near, cost, "near"
    elif ok(text, confidence, rule.fallback):
        return text, cost, "first"
    if not skip and rule.warps and (rule.warp_min_domain is None or (
            domain_confidence is not None and domain_confidence >= rule.warp_min_domain)):
        best = None
        for index in rule.warps:
            text, confidence, cpu = record[rule.warp_pass][index]
            cost += cpu
            if ok(text, confidence, rule.warp_confidence) and (best is None or confidence > best[1]):
                best = (text, confidence)
        if best is not None:
            return best[0], cost, "warp"
    if record["general"] is None:
        return None, cost, "general?"
    return record["general"][0], cost + record["general"][1], "general"


_REPLIES: dict[str, str] = {}


def _reply(text: str) -> str:
    if text not in _REPLIES:
        _REPLIES[text] = responder.respond(text)
    return _REPLIES[text]


def _domain_intent(text: str) -> bool:
    if not text:
        return False
    domain = {_reply(p) for p in phrases.domain_sentences()}
    return _reply(text) in domain


def score(rule: Rule, records: Sequence[dict], sentences: frozenset[str]) -> dict:
    """Per group: right intents (in-domain groups; OOD groups: false accepts, and exact transcripts)."""
    out: dict[str, list] = {}
    cpu = audio = 0.0
    family_cost: dict[str, list[float]] = {}  # family -> [cpu, audio]
    unknown = 0
    for record in records:
        text, cost, source = decide(rule, record, sentences)
        cpu += cost
        audio += record["audio"]
        family = {"held": "bench", "own": "bench", "tuning": "tuning"}.get(record["group"], "other")
        family_cost.setdefault(family, [0.0, 0.0])
        family_cost[family][0] += cost
        family_cost[family][1] += record["audio"]
        key = record["group"]
        if record["group"] in ("held", "own", "tuning"):
            key = f"{record['group']}:{record['channel']}"
        cell = out.setdefault(key, [0, 0])
        cell[1] += 1
        if text is None:
            unknown += 1
            continue
        if record["group"].endswith("ood"):
            cell[0] += _domain_intent(text) and not _domain_intent(record["text"])
            out.setdefault(record["group"] + "_exact", [0, 0])
            out[record["group"] + "_exact"][0] += text == record["text"]
            out[record["group"] + "_exact"][1] += 1
        elif record["group"] == "engines_in":
            cell[0] += text == record["text"] and source != "general"
        else:
            cell[0] += _reply(text) == _reply(record["text"])
    return {"cells": out, "cpu": cpu, "audio": audio, "unknown": unknown, "families": family_cost}


def _summary(result: dict, groups: Iterable[str]) -> str:
    cells = result["cells"]
    parts = []
    for group in groups:
        keys = [k for k in cells if k == group or k.startswith(group + ":")]
        if not keys:
            continue
        right = sum(cells[k][0] for k in keys)
        total = sum(cells[k][1] for k in keys)
        if ":" in keys[0]:
            worst = min(cells[k][0] for k in keys)
            parts.append(f"{group} {right}/{total} (min {worst}/{cells[keys[0]][1]})")
        else:
            parts.append(f"{group} {right}/{total}")
    parts.append("CPU RTF " + ", ".join(f"{family} {cpu / max(audio, 1e-9):.4f}"
                                        for family, (cpu, audio) in sorted(result["families"].items())))
    if result["unknown"]:
        parts.append(f"general? {result['unknown']}")
    return ", ".join(parts)


GROUPS = ("tuning", "tuning_ood", "held", "own", "ood", "engines_in", "engines_ood", "engines_ood_exact")


def rules() -> list[Rule]:
    """The grid screened: one axis at a time around the current rule, then combinations."""
    base = Rule()
    grid = [base]
    grid += [Rule(first=f) for f in (None, -15, -20, -22, -28, -30, -32, -35)]
    grid += [Rule(first=f, full=False) for f in (-25, -30, -35)]
    grid += [Rule(fallback=f) for f in (-30, -32, -38, -40, -45)]
    grid += [Rule(near_confidence=None), Rule(near_confidence=-35), Rule(near_confidence=-40),
             Rule(near_margin=1.5), Rule(near_margin=5.0), Rule(near_confidence=-50, near_margin=5.0)]
    grid += [Rule(warps=()), Rule(warps=(0, 3)), Rule(warps=(1, 2)), Rule(warps=(0, 1)), Rule(warps=(2, 3)),
             Rule(warps=(0,)), Rule(warps=(3,)), Rule(warps=(1,)), Rule(warps=(2,)), Rule(warps=(0, 2, 3)),
             Rule(warps=(1, 2, 3)), Rule(warps=(0, 1, 2))]
    grid += [Rule(warp_pass="warp_first"), Rule(warp_pass="warp_first", warps=(0, 3)),
             Rule(warp_pass="warp_first", warps=(1, 2))]
    grid += [Rule(warp_confidence=c) for c in (-25, -28, -30, -32, -38, -40)]
    grid += [Rule(warp_pass="warp_first", warp_confidence=c) for c in (-28, -30, -32)]
    grid += [Rule(warp_min_domain=d) for d in (-60, -55, -50, -45, -40)]
    grid += [Rule(full_min_first=d) for d in (-70, -60, -55, -50, -45, -40)]
    return grid


def evaluate(args: argparse.Namespace) -> None:
    records = [json.loads(line) for path in args.dumps for name in glob.glob(path)
               for line in Path(name).read_text(encoding="utf-8").splitlines()]
    sentences = frozenset(phrases.domain_sentences())
    groups = [g for g in GROUPS if any(r["group"] == g.replace("_exact", "") for r in records)]
    print(f"{len(records)} utterances: " + ", ".join(
        f"{g} {sum(r['group'] == g for r in records)}" for g in groups if not g.endswith("_exact")))
    grid = rules() if not args.extra else []
    for text in args.extra or ():
        grid.append(eval(f"Rule({text})"))
    for rule in grid:
        result = score(rule, records, sentences)
        print(f"{rule.label()}\n    {_summary(result, groups)}", flush=True)
        if args.per_channel:
            for key, (right, total) in sorted(result["cells"].items()):
                print(f"        {key}: {right}/{total}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="decode a set by every path, to a JSON-lines file")
    d.add_argument("--set", required=True, choices=("tuning", "tuning-wide", "bench", "engines"))
    d.add_argument("--channels", help="tests/channels.SIMULATED's indices, e.g. 0-4 or 0,6,7 (default: all)")
    d.add_argument("--ood", action="store_true", help="bench: also its 100 out-of-domain utterances; tuning: OUT_OF_DOMAIN in its voices")
    d.add_argument("--out", required=True)
    d.add_argument("--limit", type=int, help="only the first N utterances (a smoke test)")
    e = sub.add_parser("eval", help="replay the grid of rules over dumps")
    e.add_argument("dumps", nargs="+")
    e.add_argument("--rule", dest="extra", action="append", help="a Rule(...)'s arguments, instead of the grid")
    e.add_argument("--per-channel", action="store_true")
    args = parser.parse_args(argv)
    (dump if args.command == "dump" else evaluate)(args)


if __name__ == "__main__":
    main()
