"""Word error rate: jiwer counts plus a Kaldi/sclite-style report on disk.

The report is what one reads when a number looks wrong: the summary line
``%WER x.xx [ errs / words, ins, del, sub ]`` and, per utterance, the reference
and hypothesis aligned word by word with C/S/I/D marks. An utterance without a
hypothesis is scored as all deletions, never dropped from the denominator.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jiwer

from asrdistill.fileio import atomic_open, write_json_atomic

__all__ = ["WerResult", "read_text", "score_decode", "wer_report"]

log = logging.getLogger(__name__)


@dataclass
class WerResult:
    """Corpus-level counts; ``wer`` and ``ser`` are percentages."""

    wer: float
    errors: int
    num_words: int
    sub: int
    dels: int
    ins: int
    num_utts: int
    sentence_errors: int
    ser: float
    missing_hyps: int  # reference utterances without a hypothesis (scored as deletions)
    per_utt: dict[str, list[int]] = field(default_factory=dict)  # utt -> [errors, reference words] (bootstrap)

    def summary(self) -> str:
        return (
            f"%WER {self.wer:.2f} [ {self.errors} / {self.num_words}, {self.ins} ins, {self.dels} del, {self.sub} sub ]"
        )


def read_text(path: str | Path) -> dict[str, str]:
    """Kaldi ``text`` file (``utt word word ...``) -> ``{utt: "word word ..."}``."""
    path = Path(path)
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split(maxsplit=1)
        if not parts:
            continue
        if parts[0] in out:
            raise ValueError(f"{path}:{n}: duplicate utterance id {parts[0]!r}")
        out[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return out


def _align_rows(ref: list[str], hyp: list[str], chunks) -> tuple[list[str], list[str], list[str]]:
    """Expand jiwer's alignment chunks into three equal-length columns (ref, hyp, op)."""
    r_col, h_col, ops = [], [], []
    for c in chunks:
        if c.type == "equal":
            for i, j in zip(range(c.ref_start_idx, c.ref_end_idx), range(c.hyp_start_idx, c.hyp_end_idx)):
                r_col.append(ref[i])
                h_col.append(hyp[j])
                ops.append("C")
        elif c.type == "substitute":
            for i, j in zip(range(c.ref_start_idx, c.ref_end_idx), range(c.hyp_start_idx, c.hyp_end_idx)):
                r_col.append(ref[i])
                h_col.append(hyp[j])
                ops.append("S")
        elif c.type == "delete":
            for i in range(c.ref_start_idx, c.ref_end_idx):
                r_col.append(ref[i])
                h_col.append("***")
                ops.append("D")
        elif c.type == "insert":
            for j in range(c.hyp_start_idx, c.hyp_end_idx):
                r_col.append("***")
                h_col.append(hyp[j])
                ops.append("I")
        else:
            raise ValueError(f"unknown jiwer alignment type {c.type!r}")
    return r_col, h_col, ops


def wer_report(refs: dict[str, str], hyps: dict[str, str | list[str]], out_dir: str | Path | None = None) -> WerResult:
    """Score ``hyps`` against ``refs`` (both keyed by utterance id).

    Writes ``wer`` (summary lines), ``per_utt`` (aligned ref/hyp/op/#csid per
    utterance, Kaldi style) and ``wer.json`` into ``out_dir`` when given.
    Hypotheses may be strings or word lists; hypotheses for utterances not in
    ``refs`` are ignored with a warning.
    """
    if not refs:
        raise ValueError("no reference utterances to score")
    extra = sorted(set(hyps) - set(refs))
    if extra:
        log.warning("%d hypotheses have no reference and are ignored (e.g. %s)", len(extra), extra[0])
    utts = sorted(refs)
    missing = [u for u in utts if u not in hyps]
    if missing:
        log.warning("%d utterances have no hypothesis; scored as all deletions (e.g. %s)", len(missing), missing[0])
    ref_words = [refs[u].split() for u in utts]
    hyp_words = []
    for u in utts:
        h = hyps.get(u, "")
        hyp_words.append(h.split() if isinstance(h, str) else list(h))
    out = jiwer.process_words([" ".join(r) for r in ref_words], [" ".join(h) for h in hyp_words])

    lines: list[str] = []
    sentence_errors = 0
    per_utt: dict[str, list[int]] = {}
    for u, r, h, chunks in zip(utts, ref_words, hyp_words, out.alignments):
        r_col, h_col, ops = _align_rows(r, h, chunks)
        counts = {k: ops.count(k) for k in "CSID"}
        per_utt[u] = [counts["S"] + counts["I"] + counts["D"], len(r)]
        sentence_errors += counts["S"] + counts["I"] + counts["D"] > 0
        widths = [max(len(a), len(b)) for a, b in zip(r_col, h_col)]
        lines.append(f"{u} ref  " + " ".join(w.ljust(n) for w, n in zip(r_col, widths)))
        lines.append(f"{u} hyp  " + " ".join(w.ljust(n) for w, n in zip(h_col, widths)))
        lines.append(f"{u} op   " + " ".join(o.ljust(n) for o, n in zip(ops, widths)))
        lines.append(f"{u} #csid {counts['C']} {counts['S']} {counts['I']} {counts['D']}")

    num_words = sum(len(r) for r in ref_words)
    errors = out.substitutions + out.deletions + out.insertions
    result = WerResult(
        wer=100.0 * errors / max(num_words, 1),
        errors=errors,
        num_words=num_words,
        sub=out.substitutions,
        dels=out.deletions,
        ins=out.insertions,
        num_utts=len(utts),
        sentence_errors=int(sentence_errors),
        ser=100.0 * sentence_errors / len(utts),
        missing_hyps=len(missing),
        per_utt=per_utt,
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        with atomic_open(out_dir / "per_utt") as f:
            f.writelines(line.rstrip() + "\n" for line in lines)
        with atomic_open(out_dir / "wer") as f:
            f.write(result.summary() + "\n")
            f.write(f"%SER {result.ser:.2f} [ {result.sentence_errors} / {result.num_utts} ]\n")
            if missing:
                f.write(f"{len(missing)} utterances had no hypothesis (scored as deletions)\n")
        write_json_atomic(out_dir / "wer.json", asdict(result))
    return result


def score_decode(
    refs: dict[str, str], hyps: dict[str, str], out_dir: Path, unscored: int, vocabulary: set[str]
) -> tuple[float, dict[str, int], int]:
    """A decode folder's scoring: ``wer``/``per_utt`` of the decoded utterances (:func:`wer_report`), ``oov.txt``
    (reference words outside ``vocabulary``, with counts) and ``report.txt`` (the ``%WER``, ``%SER`` and OOV
    lines, and how many utterances with references were skipped for unusable audio: counted, not scored).
    Returns (WER, OOV counts, reference words)."""
    res = wer_report(refs, hyps, out_dir)
    tokens = [w for r in refs.values() for w in r.split()]
    oov = dict(sorted(Counter(w for w in tokens if w not in vocabulary).items(), key=lambda kv: (-kv[1], kv[0])))
    n_oov = sum(oov.values())
    with atomic_open(out_dir / "oov.txt") as f:
        f.writelines(f"{w} {c}\n" for w, c in oov.items())
    oov_line = (
        f"OOV {n_oov} of {len(tokens)} reference words ({100.0 * n_oov / max(len(tokens), 1):.2f}%), "
        f"{len(oov)} types, not in the bundle's vocabulary (listed in oov.txt)"
    )
    with atomic_open(out_dir / "report.txt") as f:
        f.write(f"{res.summary()}\n%SER {res.ser:.2f} [ {res.sentence_errors} / {res.num_utts} ]\n{oov_line}\n")
        if unscored:
            f.write(
                f"{unscored} utterance(s) with references not scored: their audio was unusable "
                "(listed in skipped.tsv)\n"
            )
    log.info("%s; %s", res.summary(), oov_line)
    return res.wer, oov, len(tokens)
