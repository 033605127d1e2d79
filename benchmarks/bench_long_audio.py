"""Long recordings against their parts: what cutting, decoding and joining costs (issue 24).

Test utterances (with references) are concatenated in id order, a pause of ``--gap``
seconds of a -60 dBFS noise floor between them, into recordings of about ``--minutes`` minutes; these are
decoded through ``decode`` (cut in pauses into segments within the model's limit,
joined back per file, :mod:`asrdistill.decoding.long_audio`) and the same utterances
one by one. Prints:

* WER of the utterances decoded one by one (scored per utterance, and joined per
  long recording in the same order) and of the long recordings, and the difference
  (goal: within 1 point absolute);
* the ctm offset error: each word of a long recording matched (same word, in
  order) to its word in the one-by-one decode, whose time plus its utterance's
  offset in the recording is where it should be; median, 95th percentile and
  maximum of the absolute difference, and the share within 0.1 s.

Run: ``python benchmarks/bench_long_audio.py --model exp/student_seed1/bundle --corpus data/test``
(``--corpus``: any folder ``asrdistill decode`` reads that has references).
"""

from __future__ import annotations

import argparse
import difflib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asrdistill.data.audio import AudioError, load_audio
from asrdistill.data.corpus import read_corpus
from asrdistill.data.datadir import DataDir
from asrdistill.decoding.bundle import DecodeReport, System, load_system
from asrdistill.decoding.scoring import wer_report


@dataclass
class Joined:
    """One long recording: the utterances it is made of, in order, and where each starts (seconds)."""

    name: str
    utts: list[str]
    offsets: list[float]


def build_long_files(
    corpus: Path, minutes: float, gap: float, sample_rate: int, out: Path, max_files: int
) -> tuple[list[Joined], DataDir, DataDir]:
    """Concatenate ``corpus``'s utterances with references, in id order, into ``out/audio/long-NNN.flac``; returns
    the recordings, a data dir of them (``text``: their utterances' references joined) and one of the parts."""
    read = read_corpus(corpus)
    # a noise floor (-60 dBFS), not digital zeros: log-mel frames of exact silence are far outside what the model
    # saw in training and, inside a segment, cost ~10 WER points that real recordings would not (BENCHMARKS.md)
    silence = np.random.default_rng(0).normal(0.0, 1e-3, int(gap * sample_rate)).astype(np.float32)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    joined: list[Joined] = []
    pieces: list[np.ndarray] = [silence]
    current, t = Joined("long-000", [], []), gap

    def close() -> None:
        sf.write(out / "audio" / f"{current.name}.flac", np.concatenate(pieces), sample_rate, subtype="PCM_24")
        joined.append(current)

    for utt in sorted(u for u in read.data.wav if u in read.refs):
        try:
            x = load_audio(read.data.wav[utt], sample_rate)
        except AudioError as e:
            print(f"  left out {utt}: {e.reason}")
            continue
        current.utts.append(utt)
        current.offsets.append(t)
        pieces += [x, silence]
        t += len(x) / sample_rate + gap
        if t >= minutes * 60:
            close()
            if len(joined) == max_files:
                break
            pieces, current, t = [silence], Joined(f"long-{len(joined):03d}", [], []), gap
    if current.utts and current not in joined:
        close()
    kept = [u for j in joined for u in j.utts]
    parts = DataDir(
        wav={u: read.data.wav[u] for u in kept}, text={u: read.refs[u] for u in kept}, utt2spk={u: u for u in kept}
    )
    long = DataDir(
        wav={j.name: str(out / "audio" / f"{j.name}.flac") for j in joined},
        text={j.name: " ".join(read.refs[u] for u in j.utts) for j in joined},
        utt2spk={j.name: j.name for j in joined},
    )
    parts.save(out / "parts_data")
    long.save(out / "long_data")
    return joined, long, parts


def read_ctm(path: Path) -> dict[str, list[tuple[float, str]]]:
    """utt -> [(start seconds, word)] in file order."""
    out: dict[str, list[tuple[float, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        utt, _, start, _, word = line.split()
        out.setdefault(utt, []).append((float(start), word))
    return out


def offset_errors(joined: list[Joined], long_ctm: dict, parts_ctm: dict) -> list[float]:
    """|long time - (part time + part offset)| of each word matched in order between the two decodes."""
    errors: list[float] = []
    for j in joined:
        expected = [(o + t, w) for u, o in zip(j.utts, j.offsets) for t, w in parts_ctm.get(u, [])]
        got = long_ctm.get(j.name, [])
        matcher = difflib.SequenceMatcher(None, [w for _, w in expected], [w for _, w in got], autojunk=False)
        for a, b, size in matcher.get_matching_blocks():
            errors += [abs(got[b + k][0] - expected[a + k][0]) for k in range(size)]
    return errors


def run(system: System, corpus: Path, work: Path, minutes: float, gap: float, max_files: int, nj: int) -> dict:
    """Build, decode both ways, print and return the figures."""
    joined, long, parts = build_long_files(corpus, minutes, gap, system.fbank.sample_rate, work, max_files)
    seconds = sum(sf.info(p).duration for p in long.wav.values())
    print(f"{len(joined)} long recording(s), {seconds / 60:.1f} min, of {len(parts.wav)} utterances ({gap:g} s pauses)")
    one: DecodeReport = system.decode_corpus(work / "parts_data", work / "parts", max_seconds=float("inf"), nj=nj)
    whole: DecodeReport = system.decode_corpus(work / "long_data", work / "long", max_seconds=float("inf"), nj=nj)
    joined_hyps = {j.name: " ".join(one.hyps.get(u, "") for u in j.utts).split() for j in joined}
    joined_one = wer_report(long.text, {u: " ".join(w) for u, w in joined_hyps.items()})
    segments = sum(int(n.split()[2]) for n in whole.notes.values() if n.startswith("cut into"))
    errors = np.asarray(offset_errors(joined, read_ctm(work / "long" / "ctm"), read_ctm(work / "parts" / "ctm")))
    figures = {
        "wer_one_by_one": one.wer,
        "wer_one_by_one_joined": joined_one.wer,
        "wer_long": whole.wer,
        "difference": (whole.wer or 0.0) - joined_one.wer,
        "segments": segments,
        "words_matched": int(errors.size),
        "offset_median": float(np.median(errors)) if errors.size else float("nan"),
        "offset_p95": float(np.percentile(errors, 95)) if errors.size else float("nan"),
        "offset_max": float(errors.max()) if errors.size else float("nan"),
        "within_0.1s": float((errors <= 0.1).mean()) if errors.size else float("nan"),
    }
    print(f"segments decoded for the long recordings: {segments}")
    print(f"WER one by one (per utterance):          {one.wer:.2f}%")
    print(f"WER one by one (joined per recording):   {joined_one.wer:.2f}%")
    print(f"WER long recordings:                     {whole.wer:.2f}%")
    print(f"difference (long - one by one, joined):  {figures['difference']:+.2f} points (goal: within 1)")
    print(
        f"ctm offsets, {errors.size} words matched: median {figures['offset_median']:.3f} s, 95% "
        f"{figures['offset_p95']:.3f} s, max {figures['offset_max']:.3f} s; within 0.1 s: "
        f"{100 * figures['within_0.1s']:.1f}%"
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a bundle (exp/<system>/bundle)")
    p.add_argument("--corpus", type=Path, required=True, help="a test set with references (e.g. data/test)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of each long recording (default: 10)")
    p.add_argument("--gap", type=float, default=0.5, help="seconds of silence between utterances (default: 0.5)")
    p.add_argument("--max-files", type=int, default=6, help="most long recordings built (default: 6)")
    p.add_argument("--nj", type=int, default=2, help="feature and decoding processes (default: 2)")
    p.add_argument("--work", type=Path, help="working folder, kept (default: a temporary one, removed)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    system = load_system(args.model, args.device)
    with tempfile.TemporaryDirectory(prefix="bench-long-audio-") as tmp:
        run(system, args.corpus, args.work or Path(tmp), args.minutes, args.gap, args.max_files, args.nj)


if __name__ == "__main__":
    main()
