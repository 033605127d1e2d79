"""A trained system as one folder, and decoding new audio with it.

A *bundle* holds everything a system needs to turn audio into words, copied in
(never referenced by a path that only resolves where the recipe ran)::

    manifest.json        format version, asrdistill version, sha256 of every other file
    system.json          members' architectures, frame context, fbank settings, decode config,
                         ensemble method, acoustic scale (tuned on dev), where it came from
    members/N.pt         each member's weights (plain state_dict; loaded with weights_only=True)
    cmvn.json            the training set's global CMVN statistics
    priors.npy           log senone priors from the training alignments
    tree.json topo.json  the senone tree and HMM topology the model's outputs are defined by
    graph/               HCLG.fst, words.txt, graph.json (built from that tree)
    lang/                phones, words and the lexicon

Every file is a copy (never a hard link: a bundle is edited, shared and
unpacked apart from the experiment it came from). :func:`load_system` checks the format version, every
checksum and that model, priors, tree and graph agree on the senone count, each
failure an error naming the file. :meth:`System.decode_corpus` decodes a folder
(LibriSpeech layout, Kaldi data dir or plain audio files) into Kaldi ``text``
and a CTM with word times, and scores it where references exist.
The manifest, checksums and staged write are :mod:`~asrdistill.decoding.bundle_manifest`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from asrdistill.aligner.kaldi_export import write_ark_scp
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import ContextTree
from asrdistill.config import to_dict
from asrdistill.data.corpus import AUDIO_SUFFIXES, NORMALIZATION, Corpus, read_corpus
from asrdistill.data.features import Cmvn, FbankConfig, compute_features
from asrdistill.data.frames import FrameConfig
from asrdistill.data.kaldi_dir import import_data_dir, needs_import
from asrdistill.data.lang import Lang
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest
from asrdistill.decoding.bundle_manifest import BUNDLE_VERSION, place_copy, staged_bundle, up_to_date, verify_manifest
from asrdistill.decoding.bundle_manifest import MANIFEST as MANIFEST
from asrdistill.decoding.bundle_manifest import sha256_file as _sha256  # the name export.py and tests import
from asrdistill.decoding.decode import DecodeConfig, compute_priors, decode
from asrdistill.decoding.decode_dir import FolderBusy, commit, sole_writer, tsv_field, write_tables
from asrdistill.decoding.hclg import check_labels_match_graph, load_graph_info
from asrdistill.decoding.long_audio import Segmented, cut_long_recordings, join_segments
from asrdistill.decoding.scoring import score_decode
from asrdistill.decoding.word_times import word_times
from asrdistill.fileio import load_weights, read_skipped, write_json_atomic
from asrdistill.logs import file_log
from asrdistill.nnet.ensemble import posterior_stream, system_checkpoints
from asrdistill.nnet.model import FrameDNN, ModelConfig

if TYPE_CHECKING:
    from asrdistill.decoding.export import ExportedNetwork

__all__ = ["BUNDLE_VERSION", "System", "DecodeReport", "FolderBusy", "write_bundle", "load_system", "word_times"]

log = logging.getLogger(__name__)

GRAPH_FILES = ("HCLG.fst", "words.txt", "graph.json")
LANG_FILES = (
    "phones.txt",
    "words.txt",
    "lexicon.txt",
    "silence_phones.txt",
    "nonsilence_phones.txt",
    "optional_silence.txt",
)


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Errors while reading ``path`` become one ``ValueError`` naming it (messages that already do pass through)."""
    try:
        yield
    except (ValueError, OSError, KeyError, TypeError, IndexError, RuntimeError, EOFError) as e:
        if str(e).startswith(str(path)):
            raise
        reason = f"missing field {e}" if isinstance(e, KeyError) else " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{path}: not a usable {what}: {reason}") from e


def write_bundle(
    system_dir: str | Path,
    out_dir: str | Path,
    *,
    feats_dir: str | Path,
    labels_dir: str | Path,
    tree_dir: str | Path,
    graph_dir: str | Path,
    lang_dir: str | Path,
    decode_config: DecodeConfig,
    method: str = "arithmetic",
    force: bool = False,
) -> Path:
    """Write the bundle of the system in ``system_dir`` to ``out_dir`` (atomically: built beside it, then renamed).

    ``feats_dir``: the training features (``cmvn.json``, and the fbank settings in
    their manifest); ``labels_dir``: the training alignments (priors); ``tree_dir``:
    ``tree.json`` and ``topo.json``; ``graph_dir``: the HCLG built from that tree.
    The acoustic scale is the one evaluation tuned on dev (``metrics.json``), else
    ``decode_config``'s. A bundle whose sources are unchanged is kept unless ``force``.
    """
    system_dir, out_dir = Path(system_dir), Path(out_dir)
    feats_dir, labels_dir, tree_dir = Path(feats_dir), Path(labels_dir), Path(tree_dir)
    graph_dir, lang_dir = Path(graph_dir), Path(lang_dir)
    checkpoints = system_checkpoints(system_dir)
    labels = ShardManifest.load(labels_dir, PDF_PREFIX)
    sources = {
        "members": [str(p) for p in checkpoints],
        "cmvn": str(feats_dir / "cmvn.json"),
        "feats": str(ShardManifest.manifest_path(feats_dir, FEATS_PREFIX)),
        "labels": [str(p) for p in labels.shard_paths],
        "tree": str(tree_dir / "tree.json"),
        "topo": str(tree_dir / "topo.json"),
        "graph": str(graph_dir / "HCLG.fst"),
        "lexicon": str(lang_dir / "lexicon.txt"),
        "metrics": str(system_dir / "metrics.json"),
    }
    hashes = _source_hashes(sources)
    if not force and up_to_date(out_dir, hashes):
        return out_dir

    tree = _matching_tree(tree_dir, graph_dir, labels, labels_dir, hashes["tree"])
    feats = ShardManifest.load(feats_dir, FEATS_PREFIX)
    fbank = FbankConfig(**feats.meta["config"])
    scale = decode_config.acoustic_scale
    metrics = system_dir / "metrics.json"
    if metrics.is_file():
        scale = float(json.loads(metrics.read_text(encoding="utf-8")).get("extra", {}).get("acoustic_scale", scale))

    with staged_bundle(out_dir, hashes) as tmp:
        members, (left, right) = _copy_members(checkpoints, tmp, tree, tree_dir / "tree.json", system_dir)
        priors = compute_priors([labels], tree.num_pdfs, floor=1e-5)
        np.save(tmp / "priors.npy", priors, allow_pickle=False)
        cmvn = Cmvn.load(feats_dir / "cmvn.json")
        Cmvn(mean=cmvn.mean, var=cmvn.var, count=cmvn.count).save(tmp / "cmvn.json")  # global stats only
        _copy_tree_graph_lang(tmp, tree_dir, graph_dir, lang_dir)
        write_json_atomic(
            tmp / "system.json",
            {
                "system": system_dir.name,
                "members": members,
                "frames": {"left": left, "right": right},
                "fbank": to_dict(fbank),
                "decode": to_dict(replace(decode_config, acoustic_scale=scale)),
                "method": method,
                "sources": sources,
            },
        )
    log.info(
        "%s: bundle of %s (%d member(s), %d senones, acoustic scale %g)",
        out_dir,
        system_dir,
        len(members),
        tree.num_pdfs,
        scale,
    )
    return out_dir


def _source_hashes(sources: dict) -> dict:
    """The sha256 of each source (a list for a list of files; None for a file that is absent, e.g. no
    ``metrics.json`` yet): what decides whether an existing bundle is still up to date."""
    return {
        k: ([_sha256(Path(p)) for p in v] if isinstance(v, list) else _sha256(Path(v)) if Path(v).is_file() else None)
        for k, v in sources.items()
    }


def _copy_tree_graph_lang(tmp: Path, tree_dir: Path, graph_dir: Path, lang_dir: Path) -> None:
    """Copies of the tree, topology, graph and lang files the decoder reads (each must exist)."""
    place_copy(tree_dir / "tree.json", tmp / "tree.json")
    place_copy(tree_dir / "topo.json", tmp / "topo.json")
    for name in GRAPH_FILES:
        place_copy(graph_dir / name, tmp / "graph" / name)
    for name in LANG_FILES:
        place_copy(lang_dir / name, tmp / "lang" / name)


def _matching_tree(
    tree_dir: Path, graph_dir: Path, labels: ShardManifest, labels_dir: Path, tree_sha256: str | None
) -> ContextTree:
    """The senone tree, once the graph and the training labels are shown to be built from it: a bundle whose
    parts disagree on the senones would decode garbage without an error."""
    built_tree = _graph_tree(graph_dir)
    if built_tree is not None and built_tree.is_file() and _sha256(built_tree) != tree_sha256:
        raise ValueError(
            f"{graph_dir}: built from {built_tree}, whose content differs from {tree_dir / 'tree.json'} "
            "(rebuild the graph with this tree)"
        )
    check_labels_match_graph(labels.meta, graph_dir, labels_dir)
    tree = ContextTree.load(tree_dir / "tree.json")
    num_pdfs = int(load_graph_info(graph_dir)["num_pdfs"])
    if num_pdfs != tree.num_pdfs:
        raise ValueError(
            f"{graph_dir / 'graph.json'}: {num_pdfs} senones, but {tree_dir / 'tree.json'} has {tree.num_pdfs}"
        )
    return tree


def _copy_members(
    checkpoints: Sequence[Path], tmp: Path, tree: ContextTree, tree_path: Path, system_dir: Path
) -> tuple[list[dict], tuple[int, int]]:
    """Each member's weights alone into ``tmp/members/N.pt`` (no optimizer or training state: the bundle is for
    decoding) and its description for ``system.json``; with the frame context they share (else an error)."""
    members, context = [], set()
    for i, ckpt_path in enumerate(checkpoints):
        ckpt = load_weights(ckpt_path)
        if int(ckpt["num_classes"]) != tree.num_pdfs:
            raise ValueError(
                f"{ckpt_path}: {ckpt['num_classes']} senones, but {tree_path} "
                f"has {tree.num_pdfs} (trained on another tree's labels?)"
            )
        frames = ckpt["config"]["frames"]
        context.add((int(frames["left"]), int(frames["right"])))
        (tmp / "members").mkdir(exist_ok=True)
        torch.save({"model": ckpt["model"]}, tmp / "members" / f"{i}.pt")
        members.append(
            {
                "file": f"members/{i}.pt",
                "from": str(ckpt_path),
                "model_config": ckpt["model_config"],
                "input_dim": int(ckpt["input_dim"]),
                "num_classes": int(ckpt["num_classes"]),
            }
        )
    if len(context) != 1:
        raise ValueError(f"{system_dir}: members use different frame contexts {sorted(context)}")
    ((left, right),) = context
    return members, (left, right)


def _graph_tree(graph_dir: Path) -> Path | None:
    """The tree the graph's done marker says it was built from (relative to where the build ran)."""
    marker = graph_dir / ".graph.done"
    if not marker.is_file():
        return None
    tree = json.loads(marker.read_text(encoding="utf-8") or "{}").get("tree")
    return Path(tree) if tree else None


# --------------------------------------------------------------------------- loading


@dataclass
class DecodeReport:
    """What :meth:`System.decode_corpus` did: ``hyps`` (utt -> text), ``skipped`` ``(utt, file, reason)``,
    ``files`` (utt -> input), ``notes`` (utt -> what was done to decode it: resampled, cut into segments);
    ``wer`` is None without references."""

    out_dir: Path
    hyps: dict[str, str]
    skipped: list[tuple[str, str, str]]
    wer: float | None
    oov: dict[str, int]
    ref_words: int
    files: dict[str, str] = field(default_factory=dict)  # utt -> its input file (or wav.scp entry)
    corpus: str = ""  # what was decoded (a folder, or "N audio file(s)")
    notes: dict[str, str] = field(default_factory=dict)  # utt -> e.g. "upsampled from 8000 Hz ..."


class System:
    """A loaded bundle: models, CMVN, priors, tree, lexicon and graph, ready to decode."""

    def __init__(self, root: str | Path, device: str | torch.device = "cpu"):
        self.root = root = Path(root)
        verify_manifest(root)
        with _reading(root / "system.json", "bundle description"):
            spec = json.loads((root / "system.json").read_text(encoding="utf-8"))
            self.name: str = spec["system"]
            self.frames = FrameConfig(left=int(spec["frames"]["left"]), right=int(spec["frames"]["right"]))
            self.fbank = FbankConfig(**spec["fbank"])
            self.decode_config = DecodeConfig(**spec["decode"])
            self.method: str = spec["method"]
        self.device = torch.device(device)
        with _reading(root / "tree.json", "senone tree"):
            self.tree = ContextTree.load(root / "tree.json")
        with _reading(root / "topo.json", "HMM topology"):
            self.topo = Topology.load(root / "topo.json")
        with _reading(root / "lang", "lang folder"):
            self.lang = Lang.load(root / "lang")
        self.graph_dir = root / "graph"
        with _reading(root / "cmvn.json", "CMVN statistics"):
            self.cmvn = Cmvn.load(root / "cmvn.json")
        with _reading(root / "priors.npy", "senone prior file (a float array saved by numpy)"):
            self.log_priors = np.load(root / "priors.npy", allow_pickle=False)
            if self.log_priors.ndim != 1 or not np.issubdtype(self.log_priors.dtype, np.floating):
                raise ValueError(f"a {self.log_priors.dtype} array of shape {self.log_priors.shape}")
        with _reading(self.graph_dir / "words.txt", "word list"):
            self.words = {
                line.split()[0]
                for line in (self.graph_dir / "words.txt").read_text(encoding="utf-8").splitlines()
                if line.strip()
            }
        with _reading(self.graph_dir / "graph.json", "graph description"):
            checks = [
                (self.graph_dir / "graph.json", int(load_graph_info(self.graph_dir)["num_pdfs"])),
                (root / "priors.npy", int(self.log_priors.shape[0])),
            ]
        self.models: list[FrameDNN] = [self._member(m, checks) for m in spec["members"]]
        self.network: ExportedNetwork | None = None  # an exported bundle's network: scores in the members' place
        if spec.get("network") is not None:
            from asrdistill.decoding.export import load_network  # imports onnxruntime: only for exported bundles

            self.network = load_network(root, spec["network"], self.cmvn.dim, checks)
        elif not self.models:
            raise ValueError(f"{root / 'system.json'}: no members and no exported network")
        num_pdfs = self.tree.num_pdfs
        for path, n in checks:
            if n != num_pdfs:
                raise ValueError(
                    f"{path}: {n} senones, but the bundle's tree {root / 'tree.json'} has {num_pdfs} "
                    "(mismatched tree: re-export the bundle)"
                )

    def _member(self, m: dict, checks: list[tuple[Path, int]]) -> FrameDNN:
        """One member network, loaded with weights-only unpickling; ``checks`` gets its senone count."""
        path = self.root / m["file"]
        state = load_weights(path, "bundle member (a state_dict saved by `asrdistill bundle`)")
        with _reading(path, "bundle member"):
            model = FrameDNN(ModelConfig(**m["model_config"]), int(m["input_dim"]), int(m["num_classes"]))
            model.load_state_dict(state["model"])
        checks.append((path, model.num_classes))
        want = self.frames.window * self.cmvn.dim
        if model.input_dim != want:
            raise ValueError(
                f"{path}: {model.input_dim} inputs, but the frame context "
                f"{self.frames.left}+1+{self.frames.right} of {self.cmvn.dim}-dim features gives {want}"
            )
        return model.to(self.device).eval().requires_grad_(False)

    def posteriors(self, feats: ShardManifest) -> Iterator[tuple[str, np.ndarray]]:
        """``(utt, log posteriors (T, senones))`` over a feature set, as evaluation computes them."""
        if self.network is not None:
            yield from self.network.posteriors(feats, self.log_priors)
            return
        for utt, logp, _ in posterior_stream(
            self.models, feats, self.cmvn, self.frames, None, self.method, self.device
        ):
            yield utt, logp.cpu().numpy()

    def export_loglikes(self, feats: ShardManifest, out_dir: str | Path) -> tuple[Path, Path, int]:
        """``out_dir/loglikes.ark`` + ``.scp``: per-frame ``log p(s|x) - log p(s)`` (T, senones) float32,
        the scaled-likelihood input Kaldi's ``*-mapped`` decoders read (before ``--acoustic-scale``)."""
        items = ((u, (p - self.log_priors).astype(np.float32)) for u, p in self.posteriors(feats))
        ark, scp, n = write_ark_scp(items, Path(out_dir) / "loglikes.ark")
        log.info("%s: log-likelihoods of %d utterance(s), %d senones", ark, n, self.tree.num_pdfs)
        return ark, scp, n

    def decode_corpus(
        self,
        corpus: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        max_seconds: float = 3600.0,
        nj: int = 1,
        command: str | None = None,
        allow_pipes: bool = False,
    ) -> DecodeReport:
        r"""Decode every usable utterance of ``corpus`` (a folder or a list of audio files) into ``out_dir``.

        A recording longer than ``max_seconds`` is skipped; one longer than the
        model's limit (the bundle's ``features.max_duration``) is cut in pauses into
        segments within it and joined back into one line
        (:mod:`~asrdistill.decoding.long_audio`). Writes ``text`` (Kaldi, one line per
        recording), ``ctm`` (``utt 1 start duration word``, in the recording's time),
        ``skipped.tsv`` (utterance, file, reason), ``files.tsv`` (each input file, its
        utterance id by :func:`~asrdistill.data.corpus.utterance_ids`, whether it
        was decoded or skipped: every input is exactly one of the two, and a note:
        resampled (upsampled from below 16 kHz costs accuracy), cut into segments), with
        references also ``wer``, ``per_utt``, ``oov.txt`` and ``report.txt`` (the
        ``%WER`` line and OOV counts), and ``log/decode.log`` (command line, config,
        timings). File names in the TSV files escape backslash, tab, newline and
        carriage return as ``\\``, ``\t``, ``\n``, ``\r``, and bytes that are not
        UTF-8 as ``\xNN``. Intermediate features go to ``out_dir/data`` and
        ``out_dir/fbank``, segments of long recordings to ``out_dir/segments``. A
        Kaldi data dir with ``segments``, ark offsets or pipes (run only with
        ``allow_pipes``) is first imported into ``out_dir/import``.
        If no input can be decoded, the outputs are still written and a
        ``ValueError`` names the corpus and the first reasons.

        One decode at a time writes ``out_dir``: a second one raises
        :class:`FolderBusy` naming the first (pid, command line). Everything is
        written into ``out_dir/.staging`` first and replaces the earlier run's
        results only when all of it is there, so a run that fails leaves them as
        they were.
        """
        out_dir = Path(out_dir)
        command = command or shlex.join(sys.argv)
        with sole_writer(out_dir, command):
            try:
                report = self._decode_staged(
                    corpus, out_dir, out_dir / ".staging", max_seconds, nj, command, allow_pipes
                )
            finally:
                shutil.rmtree(out_dir / ".staging", ignore_errors=True)
        if not report.hyps:
            reasons = "; ".join(f"{tsv_field(f)}: {r}" for _, f, r in report.skipped[:3])
            raise ValueError(
                f"{report.corpus}: none of its {len(report.files)} input(s) could be decoded "
                f"({reasons}; all listed in {out_dir / 'skipped.tsv'})"
            )
        return report

    def _decode_staged(
        self,
        corpus: str | Path | Sequence[str | Path],
        out_dir: Path,
        work: Path,
        max_seconds: float,
        nj: int,
        command: str,
        allow_pipes: bool,
    ) -> DecodeReport:
        """:meth:`decode_corpus` into ``work``, whose outputs replace ``out_dir``'s only once all are written."""
        shutil.rmtree(work, ignore_errors=True)  # a killed run's leftovers (the lock is ours)
        work.mkdir(parents=True)
        where = corpus if isinstance(corpus, (str, Path)) else f"{len(corpus)} audio file(s)"
        with file_log(out_dir / "log" / "decode.log") as fresh:
            if fresh:  # else the command's log (asrdistill decode) already starts with its command line
                log.info("command: %s", command)
            log.info(
                "bundle %s (system %s, %s); decode config %s; max_seconds %g; nj %d",
                self.root,
                self.name,
                self.network or f"{len(self.models)} member(s)",
                to_dict(self.decode_config),
                max_seconds,
                nj,
            )
            t0 = time.perf_counter()
            if isinstance(corpus, (str, Path)) and needs_import(corpus):
                import_data_dir(corpus, work / "import", allow_pipes=allow_pipes)
                corpus = work / "import"
            read = read_corpus(corpus, max_seconds=max_seconds)
            log.info(
                "%s: %s layout, %d utterance(s), %d skipped; references: %d (normalised: %s; %d changed)",
                where,
                read.layout,
                len(read.data.wav),
                len(read.skipped),
                len(read.refs),
                NORMALIZATION,
                read.normalized,
            )
            feats, skipped, segmented = self._features(read, work, nj)
            t_feats = time.perf_counter()
            rate, cut = self._rate_notes(read), segmented.notes
            notes = {u: "; ".join(n for n in (rate.get(u), cut.get(u)) if n) for u in {**rate, **cut}}
            report = DecodeReport(out_dir, {}, skipped, None, {}, 0, read.files, str(where), notes)
            frames, rtf = self._decode_into(feats, work, report, segmented, nj)
            t_decode = time.perf_counter()
            if read.refs and report.hyps:
                unusable = {s[0] for s in skipped}
                refs = {u: r for u, r in read.refs.items() if u not in unusable}
                report.wer, report.oov, report.ref_words = score_decode(
                    refs, report.hyps, work, len(read.refs) - len(refs), self.words
                )
            commit(work, out_dir)
            log.info(
                "%d utterance(s) decoded, %d skipped%s; %.2f h of audio; features %.1f s, network + search "
                "%.1f s (search RTF %.4f per core)",
                len(report.hyps),
                len(skipped),
                f" (listed in {out_dir / 'skipped.tsv'})" if skipped else "",
                frames * self.fbank.frame_shift_ms / 1000.0 / 3600,
                t_feats - t0,
                t_decode - t_feats,
                rtf,
            )
        return report

    def _rate_notes(self, read: Corpus) -> dict[str, str]:
        """A note for each recording not at the model's sample rate: upsampling cannot add what the file lacks."""
        want = self.fbank.sample_rate
        return {
            u: f"{'upsampled' if sr < want else 'downsampled'} from {sr} Hz to {want} Hz"
            + (" (the band above the file's is missing: expect more errors)" if sr < want else "")
            for u, sr in read.sample_rates.items()
            if sr != want
        }

    def _features(
        self, read: Corpus, out_dir: Path, nj: int
    ) -> tuple[ShardManifest | None, list[tuple[str, str, str]], Segmented]:
        """Features of ``read``'s usable utterances (None if there is none), everything skipped so far, and the
        long recordings' segments (:func:`~asrdistill.decoding.long_audio.cut_long_recordings`).

        A path a ``wav.scp`` line cannot hold (a newline, surrounding blanks, bytes that are not UTF-8) is
        read through a link named after its utterance id in ``out_dir/data/links``.
        """
        data = replace(read.data, wav=dict(read.data.wav))
        for utt, path in data.wav.items():
            if not path.isprintable() or path != path.strip():
                link = out_dir / "data" / "links" / f"{utt}{Path(path).suffix.lower()}"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(path)
                data.wav[utt] = str(link)
        segmented = cut_long_recordings(
            data, read.files, self.fbank.max_duration, self.fbank.sample_rate, out_dir / "segments"
        )
        data = segmented.data
        skipped = list(read.skipped) + segmented.skipped
        if not data.wav:
            return None, skipped, segmented
        data.save(out_dir / "data")
        try:
            feats = compute_features(out_dir / "data", out_dir / "fbank", self.fbank, nj=nj, force=True)
        except ValueError:
            if set(read_skipped(out_dir / "fbank" / "skipped.tsv")) != set(data.wav):
                raise
            feats = None  # no utterance has usable audio: each is listed with its reason
        skipped += [
            (u, read.files.get(u, read.data.wav.get(u, "")), r)
            for u, r in read_skipped(out_dir / "fbank" / "skipped.tsv").items()
        ]
        return feats, skipped, segmented

    def _decode_into(
        self, feats: ShardManifest | None, out_dir: Path, report: DecodeReport, segmented: Segmented, nj: int
    ) -> tuple[int, float]:
        """Decode ``feats`` into ``report.hyps``, long recordings' segments joined back, and write ``text``,
        ``ctm``, ``skipped.tsv`` and ``files.tsv``; returns (frames, search RTF)."""
        frames, rtf, hyps, times = 0, 0.0, {}, {}
        if feats is not None:
            result = decode(self.graph_dir, self.posteriors(feats), self.log_priors, replace(self.decode_config, nj=nj))
            frames, rtf = result.num_frames, result.rtf
            shift, approx = self.fbank.frame_shift_ms / 1000.0, 0
            for utt, words in result.hyps.items():
                hyps[utt] = words
                spans, exact = word_times(result.alignments[utt], words, self.lang, self.tree)
                times[utt] = [(a * shift, b * shift) for a, b in spans]
                approx += not exact
            if approx:
                log.warning(
                    "%d utterance(s): word times spread evenly (the best path's phones did not match "
                    "the words' pronunciations)",
                    approx,
                )
        join_segments(hyps, times, segmented, report.skipped, report.files)
        report.hyps = {u: " ".join(w) for u, w in hyps.items()}
        write_tables(out_dir, hyps, times, report.skipped, report.files, report.notes)
        return frames, rtf

    def transcribe(
        self, audio: str | Path | Sequence[str | Path], max_seconds: float = 3600.0, nj: int = 1
    ) -> DecodeReport:
        """Decode a folder (any layout :func:`read_corpus` reads) or a list of audio files.

        Utterance ids follow :func:`~asrdistill.data.corpus.utterance_ids` (the file
        stem where it is unique); the result's ``hyps`` maps id -> text, ``files`` id ->
        input file, and ``skipped`` lists ``(id, file, reason)`` for every input not
        decoded.
        """
        with tempfile.TemporaryDirectory(prefix="asrdistill-transcribe-") as tmp:
            if not (isinstance(audio, (str, Path)) and Path(audio).is_dir()):
                audio = [Path(audio)] if isinstance(audio, (str, Path)) else [Path(a) for a in audio]
                for f in audio:
                    if not f.name.lower().endswith(AUDIO_SUFFIXES):
                        raise ValueError(f"{f}: not a {'/'.join(AUDIO_SUFFIXES)} file")
            return self.decode_corpus(audio, Path(tmp) / "decode", max_seconds, nj, command=f"transcribe({audio!r})")


def load_system(path: str | Path, device: str | torch.device = "cpu") -> System:
    """Load and verify a bundle (``exp/<system>/bundle``): ``load_system(p).transcribe("my_audio/")``."""
    return System(path, device)
