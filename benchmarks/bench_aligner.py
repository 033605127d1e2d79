"""Alignment accuracy and cost of the built-in GMM-HMM aligner on the synthetic corpus.

Prints, for the monophone, the tied-triphone (deltas, Kaldi tri1) and the
LDA+MLLT triphone (spliced +-4, Kaldi tri2b, trained from tri1's alignment)
alignments, the share of phone
boundaries within 20 ms of espeak's true timing and the mean absolute boundary
error, as two tables (clean utterances of each subset; all conditions, noisy and
reverberant included), and the number of senones used. The full-pipeline mode
trains the GMM-HMM stage itself (up to ``--last-stage``: mono, tri1 or tri2)
and also prints its wall time per phase, peak memory and alignment frames/s.
``--recipe-dir`` trains nothing: it scores the alignments a recipe run already
wrote (``exp/mono/ali``, the training set, and
``exp/tri_ali/<subset>``, ``exp/tri2_ali/<subset>`` where present), skipping
with a message any not finished yet.

Scoring method. The truth (``<SPK>-<CH>.phones.ctm``) uses espeak phoneme
mnemonics, the aligner ARPAbet, and the two sequences differ in length (``@L``
is ``AH L``, diphthong-r combinations, elided stops...). Both are mapped to
coarse classes (silence, vowel, stop, affricate, fricative, nasal, approximant)
and aligned by edit distance (substitution 0 within a class, 1 across consonant
classes, 1.5 vowel/consonant, 3 silence/speech; insertion/deletion 1). A
boundary counts only where two consecutive aligned pairs are both same-class
matches: its true time is the end of the first espeak phone, the hypothesis the
end of the first ARPAbet phone, a frame boundary sitting midway between frame
centres (frame t covers t*10 ms .. t*10+25 ms). The number of matched boundaries
is printed beside the total, and the figures are also given without boundaries
touching l/r/w/j, which espeak itself only places to a few tens of ms.

    PYTHONPATH=. python benchmarks/bench_aligner.py --corpus /path/with/LibriSpeech --work /tmp/bench_ali
    PYTHONPATH=. python benchmarks/bench_aligner.py --hours 1 --work /tmp/bench_ali   # synthesizes first
    PYTHONPATH=. python benchmarks/bench_aligner.py --hours 5 --work /tmp/bench_ali5 --last-stage tri1  # no LDA+MLLT
    PYTHONPATH=. python benchmarks/bench_aligner.py --recipe-dir recipes/librispeech [--subsets train dev test]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

# ------------------------------------------------------------------------------------------ classes

_ESPEAK_CONS = {
    **{p: "stop" for p in "p b t d k g t# d# t2 d2 ? k# g#".split()},
    **{p: "affricate" for p in "tS dZ".split()},
    **{p: "fricative" for p in "f v T D s z S Z h x C".split()},
    **{p: "nasal" for p in "m n N n- m- N-".split()},
    **{p: "approximant" for p in "l r r- w j l/ R".split()},
}
_ARPA = {
    **{p: "stop" for p in "B D G K P T".split()},
    **{p: "affricate" for p in "CH JH".split()},
    **{p: "fricative" for p in "DH F HH S SH TH V Z ZH".split()},
    **{p: "nasal" for p in "M N NG".split()},
    **{p: "approximant" for p in "L R W Y".split()},
    **{p: "sil" for p in "SIL SPN".split()},
}


def espeak_class(phone: str) -> str:
    """Coarse class of an espeak mnemonic; anything not a listed consonant or SIL is a vowel (``@L``, ``aI@``...)."""
    if phone == "SIL":
        return "sil"
    return _ESPEAK_CONS.get(phone, "vowel")


def arpabet_class(phone: str) -> str:
    return _ARPA.get(phone.rstrip("012"), "vowel")


def _sub_cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    if "sil" in (a, b):
        return 3.0
    if "vowel" in (a, b):
        return 1.5
    return 1.0


def match_boundaries(ref: list[tuple[str, float]], hyp: list[tuple[str, float]]) -> list[tuple[float, float, bool]]:
    """Matched boundaries between class sequences: ``(true_time, hyp_time, touches_approximant)``.

    ``ref``/``hyp`` are ``(class, end_time)`` per phone in order; see the module docstring.
    """
    n, m = len(ref), len(hyp)
    cost = np.zeros((n + 1, m + 1))
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    back = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 deletion (ref only), 2 insertion (hyp only)
    back[1:, 0], back[0, 1:] = 1, 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            options = (
                cost[i - 1, j - 1] + _sub_cost(ref[i - 1][0], hyp[j - 1][0]),
                cost[i - 1, j] + 1,
                cost[i, j - 1] + 1,
            )
            k = int(np.argmin(options))
            cost[i, j], back[i, j] = options[k], k
    path: list[tuple[int, int] | None] = []  # aligned (i, j) for exact-class matches, None for anything else
    i, j = n, m
    while i > 0 or j > 0:
        k = back[i, j]
        if k == 0:
            path.append((i - 1, j - 1) if ref[i - 1][0] == hyp[j - 1][0] else None)
            i, j = i - 1, j - 1
        elif k == 1:
            path.append(None)
            i -= 1
        else:
            path.append(None)
            j -= 1
    path.reverse()
    out = []
    for a, b in zip(path, path[1:]):
        if a is not None and b is not None and a[0] + 1 < n and a[1] + 1 < m:
            approx = "approximant" in (ref[a[0]][0], ref[a[0] + 1][0])
            out.append((ref[a[0]][1], hyp[a[1]][1], approx))
    return out


def read_truth(subset_dir: Path) -> tuple[dict[str, list[tuple[str, float]]], set[str]]:
    """``(utt -> [(class, end_s)], clean utterance ids)`` from a synthetic subset folder."""
    truth: dict[str, list[tuple[str, float]]] = {}
    for ctm in sorted(subset_dir.rglob("*.phones.ctm")):
        for line in ctm.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 5:
                utt, _, start, dur, phone = parts
                truth.setdefault(utt, []).append((espeak_class(phone), float(start) + float(dur)))
    clean = set()
    cond = subset_dir / "conditions.tsv"
    if cond.is_file():
        for line in cond.read_text(encoding="utf-8").splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] == "clean":
                clean.add(parts[0])
    return truth, clean


def frame_phones(
    phone: np.ndarray, state: np.ndarray, phones: list[str], shift_s: float = 0.01, length_s: float = 0.025
) -> list[tuple[str, float]]:
    """``[(class, end_s)]`` of the phone instances of a frame alignment (end midway between frame centres)."""
    from asrdistill.aligner.stats import instance_starts

    first = np.flatnonzero(instance_starts(phone, state))
    ends = np.r_[first[1:], len(phone)]  # frame index after the last frame of each instance
    offset = (length_s - shift_s) / 2
    return [(arpabet_class(phones[phone[f]]), e * shift_s + offset) for f, e in zip(first, ends)]


@dataclass
class UttBoundaries:
    """Matched boundaries of one utterance: ``|true - hyp|`` in seconds, and whether each touches l/r/w/j."""

    errors: np.ndarray
    approx: np.ndarray
    total_ref: int  # true boundaries in the utterance, matched or not


def alignment_boundaries(
    ali_dir: Path, truth: dict[str, list[tuple[str, float]]], phones: list[str]
) -> dict[str, UttBoundaries]:
    """Boundary errors of the phone-level alignment shards ``ali_dir/ali-*.tar``, per utterance with a truth."""
    from asrdistill.data.shards import ShardManifest, iter_shard

    out = {}
    for path in ShardManifest.load(ali_dir, "ali").shard_paths:
        for utt, sample in iter_shard(path):
            if utt not in truth or len(sample["phone"]) == 0:
                continue
            ref = truth[utt]
            matched = match_boundaries(ref, frame_phones(sample["phone"], sample["state"], phones))
            out[utt] = UttBoundaries(
                np.array([abs(r - h) for r, h, _ in matched], dtype=float),
                np.array([a for _, _, a in matched], dtype=bool),
                len(ref) - 1,
            )
    return out


@dataclass
class BoundaryScore:
    """Boundary accuracy pooled over utterances (nan where nothing matched)."""

    HEADER: ClassVar[str] = (
        f"{'subset':<16} {'ali':<5} {'<=20ms':>7} {'|err| ms':>8}   {'matched / true':>15} "
        f"{'utts':>5}   {'no l/r/w/j: <=20ms':>18} {'|err| ms':>8}"
    )

    utterances: int
    matched: int
    total_ref: int
    within_20ms: float
    mean_abs_ms: float
    within_20ms_no_approx: float
    mean_abs_ms_no_approx: float

    @classmethod
    def of(cls, boundaries: dict[str, UttBoundaries], keep: set[str] | None = None) -> "BoundaryScore":
        """Pooled score of the utterances in ``keep`` (all when ``None``)."""
        sel = [b for u, b in boundaries.items() if keep is None or u in keep]
        e = np.concatenate([b.errors for b in sel]) if sel else np.zeros(0)
        ok = np.concatenate([b.errors[~b.approx] for b in sel]) if sel else np.zeros(0)
        nan = float("nan")
        return cls(
            len(sel),
            len(e),
            sum(b.total_ref for b in sel),
            float((e <= 0.02).mean()) if len(e) else nan,
            float(e.mean() * 1000) if len(e) else nan,
            float((ok <= 0.02).mean()) if len(ok) else nan,
            float(ok.mean() * 1000) if len(ok) else nan,
        )

    def row(self, subset: str, system: str) -> str:
        return (
            f"{subset:<16} {system:<5} {self.within_20ms:7.1%} {self.mean_abs_ms:8.1f}   "
            f"{self.matched:>6} / {self.total_ref:<6} {self.utterances:>5}   "
            f"{self.within_20ms_no_approx:18.1%} {self.mean_abs_ms_no_approx:8.1f}"
        )


def print_boundary_tables(corpus: Path, phones: list[str], alignments: list[tuple[str, str, Path]]) -> None:
    """Score ``(subset, system, ali_dir)`` against ``corpus/<subset>``; print clean and all-condition tables."""
    truths = {s: read_truth(corpus / s) for s in dict.fromkeys(s for s, _, _ in alignments)}
    scored = [(s, name, alignment_boundaries(d, truths[s][0], phones)) for s, name, d in alignments]
    for title, clean_only in (("clean utterances", True), ("all conditions (clean, noisy, reverberant)", False)):
        print(f"\nphone boundaries vs true timing, {title}:\n{BoundaryScore.HEADER}")
        for s, name, b in scored:
            print(BoundaryScore.of(b, truths[s][1] if clean_only else None).row(s, name))


# ------------------------------------------------------------------------------------------ pipeline


def _peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest finished child (Linux reports KB)."""
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


def _rate(res) -> str:
    """Frames/s of an :class:`~asrdistill.aligner.align.AlignResult`; a reused alignment took no time to measure."""
    if res.seconds <= 0:
        return "reused from an earlier run"
    return f"{res.num_frames / res.seconds:.0f} frames/s ({res.num_frames} frames in {res.seconds:.1f} s)"


STAGES = ("mono", "tri1", "tri2")  # each trained from the previous one's alignment
ALI_NAME = {"mono": "mono", "tri1": "tri", "tri2": "tri2"}  # folders <name>/ and <name>_ali/ under --work


def run_pipeline(args: argparse.Namespace) -> None:
    """Synthesize (unless ``--corpus``), train and time the whole GMM-HMM stage under ``--work``, then score it."""
    from asrdistill.aligner.align import AlignConfig, align_subset
    from asrdistill.aligner.hmm import HmmModel
    from asrdistill.aligner.mono import MonoConfig, train_mono
    from asrdistill.aligner.tree import TreeConfig
    from asrdistill.aligner.triphone import TriConfig, train_triphone
    from asrdistill.data.features import FbankConfig, compute_features
    from asrdistill.data.lang import Lang
    from asrdistill.data.lexicon import build_lang
    from asrdistill.fileio import is_done
    from data_prep.librispeech import prepare_librispeech

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    work = args.work
    corpus = args.corpus
    if corpus is None:
        from data_prep.synthetic import synthesize_corpus

        corpus = work / "corpus"
        synthesize_corpus(corpus, args.hours, nj=args.nj, lm_sentences=1000)
    subsets = ("train", "dev", "test")
    data = prepare_librispeech(corpus, subsets, work / "data", nj=args.nj)
    words = [w for d in data.values() for line in d.text.values() for w in line.split()]
    build_lang(words, work / "lang")
    lang = Lang.load(work / "lang")
    feats = {
        s: compute_features(work / "data" / s, work / "fbank" / s, FbankConfig(shard_size_mb=args.shard_mb), args.nj)
        for s in subsets
    }
    hours = {s: feats[s].num_frames / 360000 for s in subsets}
    print(f"corpus: {', '.join(f'{s} {h:.2f} h' for s, h in hours.items())}; {lang.num_phones} phones")

    # ---- the GMM-HMM stage, timed as a whole, up to --last-stage
    stages = STAGES[: STAGES.index(args.last_stage) + 1]
    minutes: dict[str, float] = {}  # phase -> wall minutes, in order
    t0 = time.time()
    if is_done(work / "mono", "mono"):  # reuse a finished monophone system; count its recorded time
        mono = HmmModel.load(work / "mono" / "final.pt")
        t0 -= json.loads((work / "mono" / ".mono.done").read_text())["seconds"]
        print("monophone system reused from an earlier run (its recorded training time is included)")
    else:
        mono = train_mono(
            feats["train"],
            data["train"].text,
            lang,
            work / "mono",
            MonoConfig(nj=args.nj, max_gaussians=args.mono_gaussians),
        )
    minutes["mono train"] = (time.time() - t0) / 60
    align_cfg = AlignConfig(nj=args.nj)
    t0 = time.time()
    mono_res = {s: align_subset(feats[s], data[s].text, lang, mono, work / "mono_ali" / s, align_cfg) for s in subsets}
    minutes["mono align all subsets"] = (time.time() - t0) / 60
    prev = mono_res
    for stage in stages[1:]:  # tri1 from the monophone alignment, tri2 from tri1's
        t0 = time.time()
        transform = "lda_mllt" if stage == "tri2" else "deltas"
        name = ALI_NAME[stage]
        model = train_triphone(
            prev["train"].ali,
            feats["train"],
            data["train"].text,
            lang,
            mono,
            work / name,
            TreeConfig(num_leaves=args.num_leaves),
            TriConfig(nj=args.nj, max_gaussians=args.max_gaussians, feature_transform=transform),
        )
        minutes[f"tree + {stage} ({transform}) train"] = (time.time() - t0) / 60
        t0 = time.time()
        prev = {
            s: align_subset(feats[s], data[s].text, lang, model, work / f"{name}_ali" / s, align_cfg) for s in subsets
        }
        minutes[f"{stage} labels"] = (time.time() - t0) / 60
        used = json.loads((work / f"{name}_ali" / "train" / "senone_counts.json").read_text())["num_used"]
        print(
            f"{stage}: {model.num_pdfs} senones in the tree, {used} used in the training labels, "
            f"{model.gmm.num_gauss} Gaussians, {model.transform.dim}-dim features; train label pass "
            f"{_rate(prev['train'])}"
        )
    rss_self, rss_child = _peak_rss_mb()

    print(
        f"GMM-HMM stage ({', '.join(stages)}) on {hours['train']:.2f} h train (+ dev/test labels), nj={args.nj}: "
        f"{sum(minutes.values()):.1f} min ({', '.join(f'{k} {v:.1f}' for k, v in minutes.items())}); "
        f"peak RSS main {rss_self:.0f} MB, largest worker {rss_child:.0f} MB"
    )
    print(f"monophone alignment of train alone ({mono.gmm.num_gauss} Gaussians): {_rate(mono_res['train'])}")
    names = [ALI_NAME[stage] for stage in stages]
    print_boundary_tables(
        corpus / "LibriSpeech", lang.phones, [(s, name, work / f"{name}_ali" / s) for s in subsets for name in names]
    )


def score_recipe(recipe: Path, subsets: list[str], train_set: str) -> None:
    """Score the alignments a recipe run wrote under ``recipe/exp`` against ``recipe/data/corpus``; trains nothing."""
    from asrdistill.data.lang import Lang
    from asrdistill.fileio import is_done

    lang = Lang.load(recipe / "data" / "lang")
    candidates = [(train_set, "mono", recipe / "exp" / "mono" / "ali")] if train_set in subsets else []
    candidates += [
        (s, name, recipe / "exp" / f"{name}_ali" / s)
        for s in subsets
        for name in ("tri", "tri2")
        if name == "tri" or (recipe / "exp" / f"{name}_ali" / s).is_dir()
    ]
    alignments = []
    for s, name, ali_dir in candidates:
        if is_done(ali_dir, "align"):
            alignments.append((s, name, ali_dir))
        else:
            print(f"{s} {name}: skipped, {ali_dir} holds no finished alignment (no .align.done)")
    counts = recipe / "exp" / "tri_ali" / train_set / "senone_counts.json"
    if counts.is_file():
        c = json.loads(counts.read_text(encoding="utf-8"))
        print(f"triphone: {c['num_used']} of {c['num_pdfs']} senones used in the {train_set} labels")
    else:
        print(f"triphone: senone count skipped, no {counts}")
    if alignments:
        print_boundary_tables(recipe / "data" / "corpus" / "LibriSpeech", lang.phones, alignments)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--recipe-dir",
        type=Path,
        help="score the alignments of this recipe run (e.g. recipes/librispeech) instead of training",
    )
    ap.add_argument(
        "--subsets", nargs="+", default=["train", "dev", "test"], help="with --recipe-dir: subsets to score"
    )
    ap.add_argument("--train-set", default="train", help="with --recipe-dir: the subset exp/mono/ali aligns")
    ap.add_argument("--corpus", type=Path, help="folder holding LibriSpeech/ (synthetic, with .phones.ctm)")
    ap.add_argument("--hours", type=float, default=1.0, help="synthesize this much first when --corpus is not given")
    ap.add_argument("--work", type=Path, help="working folder of the full-pipeline mode")
    ap.add_argument("--nj", type=int, default=2)
    ap.add_argument("--num-leaves", type=int, default=1000)
    ap.add_argument("--max-gaussians", type=int, default=8000)
    ap.add_argument("--mono-gaussians", type=int, default=1000)
    ap.add_argument(
        "--shard-mb", type=float, default=10.0, help="feature shard size: training parallelises over shards"
    )
    ap.add_argument(
        "--last-stage",
        choices=STAGES,
        default="tri2",
        help="full-pipeline mode: train and time up to this stage (tri1: without LDA+MLLT)",
    )
    args = ap.parse_args()
    if args.recipe_dir is not None:
        score_recipe(args.recipe_dir, args.subsets, args.train_set)
    elif args.work is None:
        ap.error("give --work (full pipeline) or --recipe-dir (score an existing run)")
    else:
        run_pipeline(args)


if __name__ == "__main__":
    main()
