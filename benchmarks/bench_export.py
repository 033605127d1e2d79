"""What shipping a student costs and keeps: PyTorch fp32 against its ONNX fp32 and int8 exports, one CPU thread.

For the bundle given, exports it (fp32 and int8, into a temporary folder, as
``asrdistill.decoding.export.export_bundle`` does) and prints, per variant, the
network's time per second of audio (CMVN, context window, network and priors:
the whole exported graph; the PyTorch row runs the same computation in
PyTorch), the network file's size, and its parity with the PyTorch posteriors
(max |d log p|, mean KL, share of frames with the same best senone) against
the tolerances the tests hold them to. Frames are the utterances of
``--feats`` (a feature shard folder, e.g. ``recipes/librispeech/data/fbank/test``:
real speech, the figures to quote) or, without it, frames drawn from the
bundle's CMVN statistics.

Run: ``python benchmarks/bench_export.py exp/student_seed1/bundle [--feats data/fbank/test] [--seconds 120]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asrdistill.data.shards import FEATS_PREFIX, ShardManifest, iter_shard
from asrdistill.decoding.bundle import load_system
from asrdistill.decoding.export import (
    FP32_TOLERANCE,
    INT8_TOLERANCE,
    NETWORK_FILES,
    FrameScorer,
    cmvn_frames,
    export_bundle,
    parity,
)


def utterances(system, feats: str | None, seconds: float) -> list[tuple[str, np.ndarray]]:
    """Up to ``seconds`` of audio as ``(utt, raw features (T, D) float32)``."""
    shift = system.fbank.frame_shift_ms / 1000.0
    if feats is None:
        return cmvn_frames(system.cmvn, utts=max(1, round(seconds / 10)), frames=int(min(seconds, 10.0) / shift))
    out, total = [], 0.0
    for path in ShardManifest.load(feats, FEATS_PREFIX).shard_paths:
        for utt, sample in iter_shard(path):
            out.append((utt, sample["feats"].astype(np.float32)))
            total += len(sample["feats"]) * shift
            if total >= seconds:
                return out
    return out


def timed(run, utts: list[tuple[str, np.ndarray]], repeats: int = 3) -> tuple[float, list[tuple[str, np.ndarray]]]:
    """Best of ``repeats`` passes (after one warm-up) in seconds, and the outputs of the last."""
    outs = [(u, run(x)) for u, x in utts]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [(u, run(x)) for u, x in utts]
        best = min(best, time.perf_counter() - t0)
    return best, outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="a bundle written by `asrdistill bundle` (PyTorch members)")
    ap.add_argument("--feats", help="feature shard folder to time and compare on (default: CMVN-drawn frames)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of audio to run (default 60)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the exported networks' sessions take the same single thread
    system = load_system(args.bundle)
    utts = utterances(system, args.feats, args.seconds)
    audio = sum(len(x) for _, x in utts) * system.fbank.frame_shift_ms / 1000.0
    scorer = FrameScorer.of(system)
    with torch.no_grad():
        t_ref, ref = timed(lambda x: scorer(torch.from_numpy(x)).numpy(), utts)
    ref = [(u, y + system.log_priors) for u, y in ref]
    params = sum(p.numel() for p in scorer.parameters())
    source = f"features {args.feats}" if args.feats else "frames drawn from the CMVN statistics"
    print(
        f"bundle {args.bundle}: {len(system.models)} member(s), {params:,} parameters; {len(utts)} utterance(s), "
        f"{audio:.1f} s of audio ({source}); 1 CPU thread"
    )
    size = sum(p.stat().st_size for p in Path(args.bundle, "members").glob("*.pt")) / 1e3
    print(f"{'variant':<14} {'ms / s audio':>12} {'speed-up':>9} {'file kB':>9}  parity with PyTorch (tolerance)")
    print(f"{'pytorch fp32':<14} {1000 * t_ref / audio:>12.3f} {1.0:>9.2f} {size:>9.1f}  (reference)")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for precision, tol in (("fp32", FP32_TOLERANCE), ("int8", INT8_TOLERANCE)):
            out = export_bundle(args.bundle, Path(tmp) / precision, quantize=precision == "int8")
            network = load_system(out).network
            t, loglikes = timed(network.loglikes, utts)
            result = parity(ref, ((u, y + system.log_priors) for u, y in loglikes))
            size = (out / NETWORK_FILES[precision]).stat().st_size / 1e3
            print(
                f"{'onnx ' + precision:<14} {1000 * t / audio:>12.3f} {t_ref / t:>9.2f} {size:>9.1f}  {result} "
                f"({'within' if result.within(tol) else 'BEYOND'} {tol})"
            )


if __name__ == "__main__":
    main()
