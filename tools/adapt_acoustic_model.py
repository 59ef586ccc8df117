"""Adapt pocketsphinx's en-us acoustic model to espeak-ng speech by MAP (sphinxtrain).

    PYTHONPATH=$PWD python tools/adapt_acoustic_model.py --work /tmp/adapt --out voicerelay/backend/acoustic_espeak

(about 5 minutes on 2 cores; needs Debian's sphinxtrain, sphinxbase-utils and pocketsphinx packages for bw,
map_adapt, mk_s2sendump, sphinx_fe and pocketsphinx_mdef_convert; the runtime needs none of them).

Synthesises adaptation speech in espeak-ng voices that neither ``benchmarks/stt_channels.py``'s
held-out voices nor ``stt.py``'s tuning voices use (no voice variant of theirs either), plus the
backend's own voices, speaking the domain sentences and other English sentences; clean and through
``tests/channels.py``'s telephone line, conditioned by ``frontend.condition`` (what the decoders
read), 16 kHz. Then sphinx_fe, bw (one pass of Baum-Welch counts over the model) and map_adapt; the
adapted mixture weights are packed back into pocketsphinx's 8-bit ``sendump`` by mk_s2sendump. The PyPI
model has no mixture_weights file: they are rebuilt from its ``sendump``. ``--out`` receives the files
the domain decoders read in place of the model's own (``stt.ADAPTED_PARAMETERS``). With ``--mllr`` a
single-class MLLR transform (``mllr_solve``) is written there instead (measured, weaker: stt.py's doc).
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
#: Other espeak-ng voices for adaptation: (language, variant).
ADAPT_ESPEAK = (
    ("en-gb", "m1"), ("en-gb-x-rp", "f5"), ("en-029", "m3"), ("en-gb-scotland", "m4"),
    ("en-us-nyc", "f2"), ("en-gb-x-gbclan", "f1"), ("en-gb-x-gbcwmd", "m6"), ("en", "Alex"),
    ("en-us", "Alicia"), ("en", "Denis"), ("en-us", "Hugo"), ("en", "Jacky"), ("en-us", "Marco"),
    ("en-gb", "adam"), ("en-us", "anika"), ("en", "belinda"), ("en-us", "benjamin"), ("en", "david"),
    ("en-us", "ed"), ("en-gb-x-rp", "iven"), ("en-us", "john"), ("en", "linda"), ("en-us", "max"),
    ("en-gb", "norbert"), ("en-us", "Michael"), ("en", "Andy"), ("en-gb-scotland", "m5"), ("en-029", "f1"),
)
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


def voices() -> list[tuple[str, str, int, int]]:
    """(label, espeak voice, wpm, pitch) for every adaptation voice."""
    rng = random.Random(11)
    out = [(f"own-{name}", name, 175, 50) for name in OPENAI_VOICES]
    for language, variant in ADAPT_ESPEAK:
        assert variant.lower() not in EXCLUDED_VARIANTS, variant
        out.append((f"{language}+{variant}", f"{language}+{variant}", rng.randrange(140, 205, 5), rng.randrange(35, 70, 5)))
    return out


def _render(job: tuple[int, str, str, int, int, str, str, str]) -> str:
    index, _label, voice, wpm, pitch, text, channel, wavdir = job
    pcm = Synthesizer(voice, wpm, pitch).synthesize(text)
    pad = lambda s: np.zeros(int(RATE * s), dtype=np.int16)
    pcm = add_noise(np.concatenate([pad(LEAD_S), pcm, pad(TRAIL_S)]), SNR_DB, seed=index)  # as the benchmark does
    if channel == "telephone":
        pcm = channels.telephone(pcm)
    fileid = f"u{index:05d}"
    soundfile.write(os.path.join(wavdir, fileid + ".wav"), frontend.condition(pcm), frontend.DECODER_RATE,
                   subtype="PCM_16")
    return f"<s> {text} </s> ({fileid})"


def generate(work: Path) -> None:
    wavdir = work / "wav"
    wavdir.mkdir(parents=True, exist_ok=True)
    jobs = []
    domain = phrases.domain_sentences()
    for label, voice, wpm, pitch in voices():
        for text in (*domain, *OTHER_SENTENCES):
            for channel in ("clean", "telephone"):
                jobs.append((len(jobs), label, voice, wpm, pitch, text, channel, str(wavdir)))
    with multiprocessing.Pool(2) as pool:
        lines = pool.map(_render, jobs, chunksize=16)
    (work / "adapt.transcription").write_text("\n".join(lines) + "\n")
    (work / "adapt.fileids").write_text("\n".join(f"u{i:05d}" for i in range(len(jobs))) + "\n")
    print(f"{len(jobs)} utterances", flush=True)


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


def train(work: Path, out: Path, mllr: bool) -> None:
    model = work / "en-us"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(MODEL, model)
    run("pocketsphinx_mdef_convert", "-text", model / "mdef", model / "mdef.txt", cwd=work)
    sendump_to_mixture_weights(model / "sendump", model / "mixture_weights")
    run("sphinx_fe", "-argfile", model / "feat.params", "-samprate", str(frontend.DECODER_RATE), "-c", work / "adapt.fileids",
        "-di", work / "wav", "-do", work / "mfc", "-ei", "wav", "-eo", "mfc", "-mswav", "yes", cwd=work)
    accum = work / "accum"
    accum.mkdir(exist_ok=True)
    run(SPHINXTRAIN / "bw", "-hmmdir", model, "-moddeffn", model / "mdef.txt", "-ts2cbfn", ".ptm.",
        "-feat", "1s_c_d_dd", "-svspec", "0-12/13-25/26-38", "-cmn", "batch", "-agc", "none",
        "-dictfn", DICT, "-fdictfn", model / "noisedict", "-ctlfn", work / "adapt.fileids",
        "-lsnfn", work / "adapt.transcription", "-cepdir", work / "mfc", "-cepext", "mfc",
        "-accumdir", accum, cwd=work)
    out.mkdir(parents=True, exist_ok=True)
    if mllr:
        run(SPHINXTRAIN / "mllr_solve", "-meanfn", model / "means", "-varfn", model / "variances",
            "-outmllrfn", out / "mllr_matrix", "-accumdir", accum, cwd=work)
        return
    adapted = work / "map"
    adapted.mkdir(exist_ok=True)
    run(SPHINXTRAIN / "map_adapt", "-moddeffn", model / "mdef.txt", "-ts2cbfn", ".ptm.",
        "-meanfn", model / "means", "-varfn", model / "variances", "-mixwfn", model / "mixture_weights",
        "-tmatfn", model / "transition_matrices", "-accumdir", accum,
        "-mapmeanfn", adapted / "means", "-mapvarfn", adapted / "variances",
        "-mapmixwfn", adapted / "mixture_weights", "-maptmatfn", adapted / "transition_matrices", cwd=work)
    run(SPHINXTRAIN / "mk_s2sendump", "-pocketsphinx", "yes", "-moddeffn", model / "mdef.txt",
        "-mixwfn", adapted / "mixture_weights", "-sendumpfn", adapted / "sendump", cwd=work)
    for name in ("means", "variances", "transition_matrices", "sendump"):
        shutil.copyfile(adapted / name, out / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-generate", action="store_true", help="reuse the audio already in --work")
    parser.add_argument("--mllr", action="store_true", help="an MLLR transform instead of MAP")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.skip_generate:
        generate(args.work)
    train(args.work, args.out.resolve(), args.mllr)


if __name__ == "__main__":
    main()
