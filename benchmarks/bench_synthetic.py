"""Times the synthetic corpus build and reports the real-time factor (the 5 h recipe corpus must be quick).

PYTHONPATH=. python benchmarks/bench_synthetic.py --hours 0.2 --nj 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import soundfile as sf

from data_prep.synthetic import synthesize_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hours", type=float, default=0.2)
    ap.add_argument("--nj", type=int, default=2)
    ap.add_argument("--lm-sentences", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        ls_dir = synthesize_corpus(Path(tmp), args.hours, nj=args.nj, lm_sentences=args.lm_sentences)
        wall = time.monotonic() - t0
        audio = sum(sf.info(p).frames for p in ls_dir.rglob("*.flac")) / 16000
    print(
        f"{audio / 3600:.3f} h of audio in {wall:.1f} s with nj={args.nj}: {audio / wall:.0f}x real time; "
        f"5 h would take ~{5 * 3600 / (audio / wall) / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
