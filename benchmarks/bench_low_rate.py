"""Low sample rates: what decoding a recording made below 16 kHz costs in WER (issue 24).

Test utterances (with references) are resampled to each of ``--rates`` (with
:func:`asrdistill.data.audio.load_audio`, i.e. ``librosa.resample``'s ``soxr_hq``,
written as 24-bit FLAC so only the lost band differs) and decoded through
``decode``, which upsamples them back to the model's rate (the same resampler) and
notes each such file as "upsampled"; the originals are decoded as the baseline.
Prints one row per rate: utterances decoded, WER % (of how many reference words),
the difference to the originals in points, and how many files carry the
"upsampled" note (all of them below the model's rate, none at it).

Run: ``python benchmarks/bench_low_rate.py --model exp/student_seed1/bundle --corpus data/test --rates 8000 11025``
(``--corpus``: any folder ``asrdistill decode`` reads that has references).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import soundfile as sf
import torch

from asrdistill.data.audio import AudioError, load_audio
from asrdistill.data.corpus import read_corpus
from asrdistill.data.datadir import DataDir
from asrdistill.decoding.bundle import DecodeReport, System, load_system


def write_copies(corpus: Path, rates: list[int], max_utts: int | None, out: Path) -> dict[str, DataDir]:
    """Data dirs of ``corpus``'s first ``max_utts`` utterances with references (in id order): ``"original"`` and
    one per rate, its audio resampled into ``out/audio_<rate>/``; an utterance that cannot be read is left out."""
    read = read_corpus(corpus)
    utts = sorted(u for u in read.data.wav if u in read.refs)[:max_utts]
    if not utts:
        raise ValueError(f"{corpus}: no readable utterance has a reference (a text file or a Kaldi dir's text)")
    dirs = {"original": {}} | {str(r): {} for r in rates}
    for utt in utts:
        try:
            copies = {r: load_audio(read.data.wav[utt], r) for r in rates}
        except AudioError as e:
            print(f"  left out {utt}: {e.reason}")
            continue
        dirs["original"][utt] = read.data.wav[utt]
        for r, x in copies.items():
            (out / f"audio_{r}").mkdir(parents=True, exist_ok=True)
            sf.write(out / f"audio_{r}" / f"{utt}.flac", x, r, subtype="PCM_24")
            dirs[str(r)][utt] = str(out / f"audio_{r}" / f"{utt}.flac")
    data = {}
    for name, wav in dirs.items():
        data[name] = DataDir(wav=wav, text={u: read.refs[u] for u in wav}, utt2spk={u: u for u in wav})
        data[name].save(out / f"{name}_data")
    return data


def upsampled(report: DecodeReport) -> int:
    """Files whose decode note says they were upsampled to the model's rate."""
    return sum("upsampled from" in note for note in report.notes.values())


def run(system: System, corpus: Path, work: Path, rates: list[int], max_utts: int | None, nj: int) -> list[dict]:
    """Resample, decode the originals and each rate's copies, print the table and return its rows."""
    want = system.fbank.sample_rate
    bad = [r for r in rates if not 0 < r < want]
    if bad:
        raise ValueError(f"--rates {bad}: each must be a positive rate below the model's {want} Hz")
    if max_utts is not None and max_utts < 1:
        raise ValueError(f"--max-utts {max_utts}: must be at least 1")
    data = write_copies(corpus, rates, max_utts, work)
    rows = []
    for name in data:
        report = system.decode_corpus(work / f"{name}_data", work / f"decode_{name}", max_seconds=float("inf"), nj=nj)
        rows.append(
            {
                "rate": f"{want} (original)" if name == "original" else name,
                "utterances": len(report.hyps),
                "wer": report.wer,
                "words": report.ref_words,
                "upsampled": upsampled(report),
            }
        )
    for row in rows:
        row["difference"] = row["wer"] - rows[0]["wer"]
    print(f"{'rate (Hz)':>18}  {'utts':>5}  {'WER % (ref. words)':>20}  {'vs original':>11}  {'upsampled':>9}")
    for row in rows:
        wer = f"{row['wer']:.2f} ({row['words']})"
        print(
            f"{row['rate']:>18}  {row['utterances']:>5}  {wer:>20}  {row['difference']:>+11.2f}  {row['upsampled']:>9}"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a bundle (exp/<system>/bundle)")
    p.add_argument("--corpus", type=Path, required=True, help="a test set with references (e.g. data/test)")
    p.add_argument("--rates", type=int, nargs="+", default=[8000], help="sample rates to test (default: 8000)")
    p.add_argument("--max-utts", type=int, help="first N utterances with references, by id (default: all)")
    p.add_argument("--nj", type=int, default=2, help="feature and decoding processes (default: 2)")
    p.add_argument("--work", type=Path, help="working folder, kept (default: a temporary one, removed)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    system = load_system(args.model, args.device)
    with tempfile.TemporaryDirectory(prefix="bench-low-rate-") as tmp:
        run(system, args.corpus, args.work or Path(tmp), args.rates, args.max_utts, args.nj)


if __name__ == "__main__":
    main()
