"""Adapt pocketsphinx's en-us acoustic model to espeak-ng speech by MAP (sphinxtrain).

    PYTHONPATH=$PWD python tools/adapt_acoustic_model.py --work /tmp/adapt --out voicerelay/backend/acoustic_espeak

(about 5 minutes on a quiet 2-core machine, 15 with ``--data second --iterations 2``; needs Debian's
sphinxtrain, sphinxbase-utils and pocketsphinx packages for bw, map_adapt, mk_s2sendump, sphinx_fe and
pocketsphinx_mdef_convert; the runtime needs none of them). The defaults make the shipped files.

Synthesises adaptation speech (seeded) in espeak-ng voices that neither ``benchmarks/stt_channels.py``'s
held-out voices nor ``stt.py``'s tuning voices use (no voice variant of theirs either), plus the
backend's own voices, speaking the domain sentences and other English sentences, conditioned by
``frontend.condition`` (what the decoders read), 16 kHz: ``--data first`` (:func:`jobs_first`, 38
voices, clean and through ``tests/channels.py``'s telephone line, 4,104 utterances) or ``--data
second`` (:func:`jobs`, 76 voices at varied speeds and pitches, through all its simulated channels,
8,208). Then sphinx_fe, and ``--iterations`` passes of bw (Baum-Welch counts) and map_adapt, each after
the first aligning with the last one's model and taking it as its prior; the adapted mixture weights
are packed back into pocketsphinx's 8-bit ``sendump`` by mk_s2sendump. The PyPI model has no
mixture_weights file: they are rebuilt from its ``sendump``. ``--out`` receives the files the domain
decoders read in place of the model's own (``stt.ADAPTED_PARAMETERS``). With ``--mllr`` a single-class
MLLR transform (``mllr_solve``) is written there instead (measured, weaker: stt.py's doc).

What was screened (2026-12-07, throwaway runs of ``benchmarks/stt_channels.py --no-pulse --no-browser``
with ``stt.ADAPTED_PARAMETERS`` pointed at each model; held-out voices clean / telephone of 144, own
voices of 96 each, out-of-domain speech taken for a domain phrase of 100; "SE": ``speech_engines.py
--accuracy``'s out-of-domain utterances kept, of 200; "-": not measured):

===========================================================  =========  =======  ===  ==
data, passes, tau                                            held-out   own      OOD  SE
===========================================================  =========  =======  ===  ==
first, 1 pass (shipped until 2026-12-07)                     132 / 131  96 / 96  3    3
second, 1 pass                                               139 / 135  96 / 96  4    -
  fixed tau 1 (``--tau 1``)                                  140 / 139  96 / 96  -    -
  fixed tau 3                                                139 / 139  96 / 96  5    -
  fixed tau 10                                               139 / 135  96 / 95  -    -
  fixed tau 30                                               139 / 130  96 / 94  -    -
  fixed tau 3, 2 passes                                      139 / 141  96 / 96  5    -
second, 2 passes (shipped)                                   141 / 139  96 / 96  3    5
  the model's own mixture weights (``sendump``), the rest as  133 / 124  96 / 96  -    -
    above (other channels 132-134)
===========================================================  =========  =======  ===  ==

"second, 1 pass" gained in every simulated channel (138-139/144, telephone 135) but took 4/100
out-of-domain utterances ("sorry" -> "how are you", "okay" -> "thank you"). "second, 2 passes" met the
95 % target in every simulated channel (139-142/144; own voices 96/96 in every channel; in domain 240/240),
but ``speech_engines.py`` kept two more out-of-domain utterances ("music" -> "how are you today" four
times, "sorry" -> "stop") with the recogniser's rule of the time; with the rule re-screened the same day
(``stt.py``, no near miss, hopeless decodes to the general model) it keeps none, so it ships (figures in
``stt.py``'s "The second adapted model"). Fixed taus adapt harder than map_adapt's own estimate:
as good or better on held-out voices, worse on out-of-domain speech ("music" -> "how are you today",
"okay" -> "goodbye"). A stricter confidence for the domain decode with such a model is the next thing
to measure. The adapted mixture weights carry most of the gain: without them (the last row: the
two-pass model's means, variances and transition matrices with the model's own ``sendump``) held-out
voices fall back to the first model's figures, and below them through the telephone line.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import pocketsphinx
from stt_channels import LEAD_S, RATE, SNR_DB, TRAIL_S

from tests import channels
from voicerelay.backend import frontend, phrases
from voicerelay.backend.tts import OPENAI_VOICES, Synthesizer, add_noise

SPHINXTRAIN = Path("/usr/lib/sphinxtrain")
MODEL = Path(pocketsphinx.get_model_path()) / "en-us" / "en-us"
DICT = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"

#: Voice variants the evaluation sets use (held-out and tuning voices): never adapted on.
EXCLUDED_VARIANTS = {"m7", "annie", "m8", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
                     "f3", "lee", "edward", "edward2", "andrea", "m2", "mike", "mike2", "f4", "gene",
                     "gene2", "robert", "steph", "steph2", "steph3"}
#: The adaptation speech and passes of the shipped files (``--data``, ``--iterations``).
DEFAULT_DATA, DEFAULT_ITERATIONS = "second", 2
#: Other espeak-ng voices for adaptation: (language, variant).
ADAPT_ESPEAK = (
    ("en-gb", "m1"), ("en-gb-x-rp", "f5"), ("en-029", "m3"), ("en-gb-scotland", "m4"),
    ("en-us-nyc", "f2"), ("en-gb-x-gbclan", "f1"), ("en-gb-x-gbcwmd", "m6"), ("en", "Alex"),
    ("en-us", "Alicia"), ("en", "Denis"), ("en-us", "Hugo"), ("en", "Jacky"), ("en-us", "Marco"),
    ("en-gb", "adam"), ("en-us", "anika"), ("en", "belinda"), ("en-us", "benjamin"), ("en", "david"),
    ("en-us", "ed"), ("en-gb-x-rp", "iven"), ("en-us", "john"), ("en", "linda"), ("en-us", "max"),
    ("en-gb", "norbert"), ("en-us", "Michael"), ("en", "Andy"), ("en-gb-scotland", "m5"), ("en-029", "f1"),
)
#: More of them: the held-out voices' language voices more often (en-us-nyc, en-029, en-us), the
#: other Klatt-synthesised variants (robosoft, Reed, announcer, caleb, UniRobot) and other variants, none
#: whispered. ("en-gb" is no espeak-ng voice name here: Synthesizer falls back to plain en-us, so the three
#: "en-gb+..." voices above are en-us's own voice.)
MORE_ESPEAK = (
    ("en-us-nyc", "m1"), ("en-us-nyc", "m3"), ("en-us-nyc", "Storm"), ("en-us-nyc", "quincy"), ("en-us-nyc", "iven"),
    ("en-us-nyc", "aunty"), ("en-us-nyc", "sandro"), ("en-029", "m1"), ("en-029", "m5"), ("en-029", "Denis"),
    ("en-029", "zac"), ("en-029", "paul"), ("en-029", "grandma"), ("en-029", "iven3"), ("en-us", "Reed"),
    ("en-us", "announcer"), ("en-us", "caleb"), ("en-us", "robosoft"), ("en-us", "UniRobot"), ("en-us", "travis"),
    ("en-us", "Nguyen"), ("en-us", "Diogo"), ("en-gb-x-rp", "m3"), ("en-gb-x-rp", "shelby"), ("en-gb-x-rp", "victor"),
    ("en-gb-scotland", "m1"), ("en-gb-scotland", "f5"), ("en-gb-scotland", "rob"), ("en", "ian"), ("en", "Tweaky"),
    ("en", "grandpa"), ("en", "boris"), ("en", "Mario"), ("en-us", "AnxiousAndy"), ("en-gb-x-rp", "antonio"),
    ("en-gb-x-gbclan", "m5"), ("en-gb-x-gbcwmd", "f2"), ("en", "gustave"),
)
#: The channels a render of an other voice goes through besides clean, drawn per utterance.
MORE_CHANNELS = ("telephone", "telephone", "16>48>24 kHz", "44.1>24 kHz", "gain -20 dB", "gain +6 dB",
                 "noise -45 dBFS", "browser (sim)", "44.1k -60 dBFS (sim)")
#: English sentences outside the domain (so the transform is not fitted to the domain's words only).
OTHER_SENTENCES = (
    "the quick brown fox jumps over the lazy dog", "please call me back after lunch",
    "the meeting has been moved to thursday", "she sells sea shells by the sea shore",
    "how much does a ticket to boston cost", "my phone battery is almost empty",
    "we need more milk and some bread", "turn left at the next traffic light",
    "the children are playing in the garden", "i forgot my keys at the office",
    "could you repeat that more slowly", "the train was twenty minutes late",
    "write down the number seven hundred and four", "there is a small cafe around the corner",
    "he bought a new bicycle last summer", "do not forget to water the plants",
    "the museum opens at nine in the morning", "my sister lives in a big city",
    "yes", "no", "thanks a lot", "good night", "see you tomorrow", "one two three four five",
    "six seven eight nine ten", "january february march april", "red orange yellow blue purple",
    "the weather was cold and windy yesterday", "can you check my email", "close the window please",
)


def jobs_first(wavdir: str) -> list[tuple[int, str, str, int, int, str, str, str]]:
    """``--data first``: the own voices (175 wpm, pitch 50) and ADAPT_ESPEAK's (one speed and pitch each,
    seeded), every sentence clean and through the telephone line: 4,104 utterances."""
    rng = random.Random(11)
    voices = [(f"own-{name}", name, 175, 50) for name in OPENAI_VOICES]
    for language, variant in ADAPT_ESPEAK:
        assert variant.lower() not in EXCLUDED_VARIANTS, variant
        voices.append((f"{language}+{variant}", f"{language}+{variant}", rng.randrange(140, 205, 5),
                       rng.randrange(35, 70, 5)))
    made: list[tuple[int, str, str, int, int, str, str, str]] = []
    for label, voice, wpm, pitch in voices:
        for text in (*phrases.domain_sentences(), *OTHER_SENTENCES):
            for channel in ("clean", "telephone"):
                made.append((len(made), label, voice, wpm, pitch, text, channel, wavdir))
    return made


def jobs(wavdir: str) -> list[tuple[int, str, str, int, int, str, str, str]]:
    """(index, label, espeak voice, wpm, pitch, text, channel, wavdir) for every utterance: the own voices
    (175 wpm, pitch 50) say each sentence clean and through the telephone line; every other voice
    (ADAPT_ESPEAK + MORE_ESPEAK) says it twice, clean and through a channel drawn from MORE_CHANNELS,
    each render at its own speed (130-210 wpm) and pitch (30-70)."""
    rng = random.Random(12)
    made: list[tuple[int, str, str, int, int, str, str, str]] = []
    texts = (*phrases.domain_sentences(), *OTHER_SENTENCES)
    for name in OPENAI_VOICES:
        for text in texts:
            for channel in ("clean", "telephone"):
                made.append((len(made), f"own-{name}", name, 175, 50, text, channel, wavdir))
    for language, variant in (*ADAPT_ESPEAK, *MORE_ESPEAK):
        assert variant.lower() not in EXCLUDED_VARIANTS, variant
        for text in texts:
            for channel in ("clean", rng.choice(MORE_CHANNELS)):
                made.append((len(made), f"{language}+{variant}", f"{language}+{variant}", rng.randrange(130, 215, 5),
                             rng.randrange(30, 75, 5), text, channel, wavdir))
    return made


def _render(job: tuple[int, str, str, int, int, str, str, str]) -> str:
    index, _label, voice, wpm, pitch, text, channel, wavdir = job
    pcm = Synthesizer(voice, wpm, pitch).synthesize(text)
    pad = lambda s: np.zeros(int(RATE * s), dtype=np.int16)
    pcm = add_noise(np.concatenate([pad(LEAD_S), pcm, pad(TRAIL_S)]), SNR_DB, seed=index)  # as the benchmark does
    if channel != "clean":
        pcm = channels.SIMULATED[channel](pcm)
    fileid = f"u{index:05d}"
    soundfile.write(os.path.join(wavdir, fileid + ".wav"), frontend.condition(pcm), frontend.DECODER_RATE,
                   subtype="PCM_16")
    return f"<s> {text} </s> ({fileid})"


def generate(work: Path, data: str) -> None:
    wavdir = work / "wav"
    wavdir.mkdir(parents=True, exist_ok=True)
    utterances = (jobs if data == "second" else jobs_first)(str(wavdir))
    with multiprocessing.Pool(2) as pool:
        lines = pool.map(_render, utterances, chunksize=16)
    (work / "adapt.transcription").write_text("\n".join(lines) + "\n")
    (work / "adapt.fileids").write_text("\n".join(f"u{i:05d}" for i in range(len(utterances))) + "\n")
    print(f"{len(utterances)} utterances", flush=True)


def sendump_to_mixture_weights(sendump: Path, out: Path) -> None:
    """pocketsphinx's 8-bit sendump (-log1.0001(p) >> 10) as a sphinxtrain float mixture_weights file."""
    data = sendump.read_bytes()
    offset = 0
    while True:
        (length,) = struct.unpack_from("<i", data, offset)
        offset += 4
        if length == 0:
            break
        offset += length
    n_density, n_sen = struct.unpack_from("<ii", data, offset)
    offset += 8
    n_feat = 3
    raw = np.frombuffer(data, dtype=np.uint8, count=n_feat * n_density * n_sen, offset=offset)
    weights = np.exp(-raw.reshape(n_feat, n_density, n_sen).astype(np.float64) * 1024 * np.log(1.0001))
    weights = weights.transpose(2, 0, 1)  # senone, feature, density
    weights /= weights.sum(axis=2, keepdims=True)
    body = weights.astype("<f4")
    with open(out, "wb") as file:
        file.write(b"s3\nversion 1.0\nendhdr\n")
        file.write(struct.pack("<I", 0x11223344))
        file.write(struct.pack("<iiii", n_sen, n_feat, n_density, body.size))
        file.write(body.tobytes())


def run(*args: str | Path, cwd: Path) -> None:
    print("+", " ".join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def train(work: Path, out: Path, mllr: bool, iterations: int = 1, tau: float | None = None,
          skip_features: bool = False, processes: int = 1) -> None:
    model = work / "en-us"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(MODEL, model)
    run("pocketsphinx_mdef_convert", "-text", model / "mdef", model / "mdef.txt", cwd=work)
    sendump_to_mixture_weights(model / "sendump", model / "mixture_weights")
    if not skip_features:
        run("sphinx_fe", "-argfile", model / "feat.params", "-samprate", str(frontend.DECODER_RATE), "-c",
            work / "adapt.fileids", "-di", work / "wav", "-do", work / "mfc", "-ei", "wav", "-eo", "mfc",
            "-mswav", "yes", cwd=work)
    out.mkdir(parents=True, exist_ok=True)
    current = model  # the model bw aligns with, and map_adapt's prior
    for iteration in range(1, iterations + 1):
        accums = [work / f"accum{iteration}-{part}" for part in range(1, processes + 1)]
        bw = [SPHINXTRAIN / "bw", "-hmmdir", current, "-moddeffn", model / "mdef.txt", "-ts2cbfn", ".ptm.",
              "-feat", "1s_c_d_dd", "-svspec", "0-12/13-25/26-38", "-cmn", "batch", "-agc", "none",
              "-dictfn", DICT, "-fdictfn", model / "noisedict", "-ctlfn", work / "adapt.fileids",
              "-lsnfn", work / "adapt.transcription", "-cepdir", work / "mfc", "-cepext", "mfc"]
        running = []
        for part, accum in enumerate(accums, 1):  # bw on equal parts of the corpus at once; the counts add up
            accum.mkdir(exist_ok=True)
            args = [*bw, "-accumdir", accum, "-npart", processes, "-part", part]
            print("+", " ".join(map(str, args)), flush=True)
            running.append(subprocess.Popen([str(a) for a in args], cwd=work, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        if any(process.wait() for process in running):
            raise SystemExit("bw failed")
        if mllr:
            run(SPHINXTRAIN / "mllr_solve", "-meanfn", model / "means", "-varfn", model / "variances",
                "-outmllrfn", out / "mllr_matrix", "-accumdir", *accums, cwd=work)
            return
        adapted = work / f"map{iteration}"
        if adapted.exists():
            shutil.rmtree(adapted)
        shutil.copytree(model, adapted)  # mdef, feat.params, noisedict for the next bw
        prior = ["-fixedtau", "yes", "-tau", str(tau), "-bayesmean", "no"] if tau is not None else []
        run(SPHINXTRAIN / "map_adapt", "-moddeffn", model / "mdef.txt", "-ts2cbfn", ".ptm.",
            "-meanfn", current / "means", "-varfn", current / "variances", "-mixwfn", current / "mixture_weights",
            "-tmatfn", current / "transition_matrices", "-accumdir", *accums, *prior,
            "-mapmeanfn", adapted / "means", "-mapvarfn", adapted / "variances",
            "-mapmixwfn", adapted / "mixture_weights", "-maptmatfn", adapted / "transition_matrices", cwd=work)
        run(SPHINXTRAIN / "mk_s2sendump", "-pocketsphinx", "yes", "-moddeffn", model / "mdef.txt",
            "-mixwfn", adapted / "mixture_weights", "-sendumpfn", adapted / "sendump", cwd=work)
        current = adapted
    for name in ("means", "variances", "transition_matrices", "sendump"):
        shutil.copyfile(current / name, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-generate", action="store_true", help="reuse the audio already in --work")
    parser.add_argument("--skip-features", action="store_true", help="reuse the features already in --work too")
    parser.add_argument("--mllr", action="store_true", help="an MLLR transform instead of MAP")
    parser.add_argument("--data", choices=("first", "second"), default=DEFAULT_DATA,
                        help="the adaptation speech: jobs_first() or jobs() (default: what ships)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help="bw + map_adapt passes, each aligning with the last one's model and taking it as prior")
    parser.add_argument("--tau", type=float,
                        help="map_adapt with this fixed tau and no Bayesian means (default: its own estimate)")
    parser.add_argument("--processes", type=int, default=1,
                        help="bw processes at once, each on a part of the corpus (their counts add up to the same "
                             "up to the order of float additions)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.skip_generate:
        generate(args.work, args.data)
    train(args.work, args.out.resolve(), args.mllr, args.iterations, args.tau, args.skip_features, args.processes)


if __name__ == "__main__":
    main()
