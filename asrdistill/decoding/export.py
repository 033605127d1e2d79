"""A student you can ship: a bundle's network exported to ONNX (fp32 or int8) and decoded with ONNX Runtime.

Why ONNX rather than TorchScript: a hybrid (DNN-HMM) system is deployed as a
network that scores frames beside a WFST search written in C++ (Kaldi,
kaldi-decoder, Vosk, sherpa-onnx), often on phones and embedded boards. ONNX
Runtime runs the same file from C, C++, C#, Java/Android, Objective-C/Swift,
Python and the browser, in a library of a few MB; next-gen Kaldi's runtime
(sherpa-onnx) ships its models this way. TorchScript needs libtorch (hundreds
of MB, C++ and Python only) and is in maintenance mode in PyTorch. So one
format is exported, and int8 is ONNX Runtime's dynamic quantization.

The exported graph holds everything between the features and the search::

    feats     (T, D) float32  one utterance's log-mel fbank, as system.json's fbank settings compute it
    loglikes  (T, C) float32  log p(s|x) - log p(s): the scaled log-likelihoods a hybrid decoder reads
                              (Kaldi's ``*-mapped`` decoders; before the acoustic scale)

Inside it: global CMVN, the context window (edge frames repeated, as in
training), every member and their combination, and the log senone priors. Who
runs it applies nothing stored beside it: the file, the fbank front end and the
HCLG graph are the whole deployment.

:func:`export_bundle` writes an *exported bundle*: the bundle's files with
``network.onnx`` (or ``network.int8.onnx``) in place of ``members/``, recorded
in ``system.json`` (``network``) and checksummed in ``manifest.json`` like every
other file. :func:`~asrdistill.decoding.bundle.load_system` recognises it and
scores frames with it; the search and everything after it are unchanged. The
export is refused if the fp32 graph's posteriors differ from PyTorch's by more
than :data:`FP32_TOLERANCE` on frames drawn from the CMVN statistics; an int8
graph's figures on them are recorded (int8 error is the model's to judge on
real data: :func:`parity`, ``benchmarks/bench_export.py``)::

    export_bundle("exp/student_seed1/bundle", "exp/student_seed1/bundle_int8", quantize=True)
    asrdistill decode --model exp/student_seed1/bundle_int8 --corpus my_audio/ --out my_audio_decoded
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from asrdistill import __version__
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, context_windows
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.decoding.bundle import MANIFEST, System, _sha256, load_system, staged_bundle, up_to_date
from asrdistill.fileio import write_json_atomic
from asrdistill.nnet.ensemble import combine_logits

__all__ = [
    "FORMAT",
    "FP32_TOLERANCE",
    "INT8_TOLERANCE",
    "FrameScorer",
    "ExportedNetwork",
    "Parity",
    "Tolerance",
    "cmvn_frames",
    "export_bundle",
    "load_network",
    "parity",
]

log = logging.getLogger(__name__)

FORMAT = "onnx"
OPSET = 18
NETWORK_FILES = {"fp32": "network.onnx", "int8": "network.int8.onnx"}


@dataclass(frozen=True)
class Tolerance:
    """How far an exported network's log posteriors may be from PyTorch's on the same frames."""

    max_abs_logp: float  # largest |difference| of a log posterior, over all frames and senones (nats)
    mean_kl: float  # mean KL(PyTorch || exported) per frame (nats)
    agree: float  # least share of frames whose best senone is the same


# fp32: the same arithmetic in another order (float32 rounding is ~1e-6 here; 1e-3 leaves room for deep nets).
FP32_TOLERANCE = Tolerance(max_abs_logp=1e-3, mean_kl=1e-6, agree=0.999)
# int8: weights rounded to 256 levels per output channel and activations per call move log posteriors by
# tenths of a nat on unlikely senones, and flip the best senone where two nearly tie; what the search reads is
# the distribution, so the bound is on its KL (a missing prior alone costs nats).
INT8_TOLERANCE = Tolerance(max_abs_logp=math.inf, mean_kl=0.01, agree=0.85)


@dataclass
class Parity:
    """How close one system's log posteriors are to a reference's on the same frames."""

    frames: int
    max_abs_logp: float
    mean_kl: float
    agree: float

    def within(self, tol: Tolerance) -> bool:
        return self.max_abs_logp <= tol.max_abs_logp and self.mean_kl <= tol.mean_kl and self.agree >= tol.agree

    def __str__(self) -> str:
        return (
            f"{self.frames} frames: max |d log p| {self.max_abs_logp:.2e}, mean KL {self.mean_kl:.2e} nats, "
            f"same best senone {100 * self.agree:.2f}%"
        )


def parity(reference: Iterable[tuple[str, np.ndarray]], other: Iterable[tuple[str, np.ndarray]]) -> Parity:
    """Compare two ``(utt, log posteriors (T, C))`` streams over the same utterances, in the same order."""
    frames, max_abs, kl, agree = 0, 0.0, 0.0, 0
    for (utt, p), (utt2, q) in zip(reference, other, strict=True):
        if utt != utt2 or p.shape != q.shape:
            raise ValueError(f"parity: utterance {utt} {p.shape} against {utt2} {q.shape}")
        p, q = p.astype(np.float64), q.astype(np.float64)
        frames += p.shape[0]
        max_abs = max(max_abs, float(np.abs(p - q).max(initial=0.0)))
        kl += float((np.exp(p) * (p - q)).sum())
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
    if frames == 0:
        raise ValueError("parity: no frames to compare")
    return Parity(frames, max_abs, kl / frames, agree / frames)


class FrameScorer(nn.Module):
    """``(T, D)`` raw features of one utterance -> ``(T, C)`` scaled log-likelihoods: the graph that is exported.

    The same CMVN, context window and member combination as
    :func:`~asrdistill.nnet.ensemble.posterior_stream` (the functions are shared,
    not copied), with the priors subtracted.
    """

    def __init__(
        self, members: Sequence[nn.Module], cmvn: Cmvn, frames: FrameConfig, log_priors: np.ndarray, method: str
    ):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.left, self.right, self.method = frames.left, frames.right, method
        shift, scale = cmvn.shift_scale()
        self.register_buffer("cmvn_shift", shift.clone())
        self.register_buffer("cmvn_scale", scale.clone())
        self.register_buffer("log_priors", torch.as_tensor(log_priors, dtype=torch.float32))

    @classmethod
    def of(cls, system: System) -> FrameScorer:
        if system.network is not None:
            raise ValueError(
                f"{system.root}: already an exported bundle ({system.network}); "
                "export from the PyTorch bundle it was made from"
            )
        return cls(system.models, system.cmvn, system.frames, system.log_priors, system.method).eval()

    def forward(self, feats: Tensor) -> Tensor:
        x = (feats + self.cmvn_shift) * self.cmvn_scale  # (T, D)
        windows = context_windows(x, self.left, self.right)  # (T, (left + 1 + right) * D)
        logp = combine_logits([m(windows) for m in self.members], 1.0, self.method)  # (T, C)
        return logp - self.log_priors


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Only errors from ``loggers`` and no warnings: the exporter's and quantizer's advice (torchvision's
    operators are absent; pre-process before *static* quantization) concerns other models."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for name in loggers:
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def _export_onnx(scorer: FrameScorer, dim: int, path: Path) -> None:
    """``scorer`` as an ONNX graph with a variable frame count (torch.export, then ONNX opset :data:`OPSET`)."""
    example = torch.zeros(max(8, scorer.left + scorer.right + 2), dim)
    with _quiet("torch.onnx"):
        torch.onnx.export(
            scorer,
            (example,),
            path,
            input_names=["feats"],
            output_names=["loglikes"],
            dynamic_shapes={"feats": {0: torch.export.Dim("frames", min=1)}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _quantize(fp32: Path, int8: Path) -> None:
    """int8 weights of every MatMul/Gemm (the Linear layers; per output channel), activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(""):  # the quantizer logs to the root logger
        quantize_dynamic(
            fp32, int8, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"]
        )


class ExportedNetwork:
    """An exported network run by ONNX Runtime on the CPU: the scorer of an exported bundle."""

    def __init__(self, path: Path, precision: str, threads: int):
        import onnxruntime as ort

        self.path, self.precision = path, precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
            if (inp.name, out.name) != ("feats", "loglikes") or len(inp.shape) != 2 or len(out.shape) != 2:
                raise ValueError(
                    f"input {inp.name} {inp.shape}, output {out.name} {out.shape}; "
                    "expected feats (frames, dim) -> loglikes (frames, senones)"
                )
        except Exception as e:  # onnxruntime's own errors are not ValueError/RuntimeError subclasses
            raise ValueError(f"{path}: not a usable exported network: {' '.join(str(e).split())}") from e
        self.input_dim, self.num_classes = inp.shape[1], out.shape[1]

    def __str__(self) -> str:
        return f"{self.path.name} ({FORMAT} {self.precision})"

    def loglikes(self, feats: np.ndarray) -> np.ndarray:
        """``(T, D)`` raw features of one utterance -> ``(T, C)`` float32 scaled log-likelihoods."""
        return self.session.run(None, {"feats": np.ascontiguousarray(feats, dtype=np.float32)})[0]

    def posteriors(self, feats: ShardManifest, log_priors: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """``(utt, log posteriors (T, C))`` over a feature set in stored order, as :meth:`System.posteriors` gives
        them (the graph's log-likelihoods plus the bundle's log priors)."""
        for path in feats.shard_paths:
            for utt, sample in iter_shard(path):
                yield utt, self.loglikes(sample["feats"]) + log_priors


def load_network(root: Path, spec: dict, feat_dim: int, checks: list[tuple[Path, int]]) -> ExportedNetwork:
    """The exported network ``system.json``'s ``network`` entry names; ``checks`` gets its senone count."""
    where = root / "system.json"
    try:
        fmt, precision, path = spec["format"], spec["precision"], root / spec["file"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a usable network entry {spec!r} (needs format, precision, file)") from e
    if fmt != FORMAT or precision not in NETWORK_FILES:
        raise ValueError(
            f"{where}: network format {fmt!r} precision {precision!r}; this asrdistill "
            f"{__version__} runs {FORMAT} {' or '.join(NETWORK_FILES)}"
        )
    network = ExportedNetwork(path, precision, torch.get_num_threads())
    if network.input_dim != feat_dim:
        raise ValueError(f"{path}: reads {network.input_dim}-dim features, but the bundle's CMVN is {feat_dim}-dim")
    checks.append((path, int(network.num_classes)))
    return network


def cmvn_frames(cmvn: Cmvn, utts: int = 4, frames: int = 200, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Utterances of frames drawn from the bundle's CMVN statistics: inputs in the range the network was trained
    on, for the export's own parity check (no features need to travel with a bundle)."""
    rng = np.random.default_rng(seed)
    std = np.sqrt(np.maximum(cmvn.var, 1e-10))
    return [
        (f"check{i}", (cmvn.mean + std * rng.standard_normal((frames, cmvn.dim))).astype(np.float32))
        for i in range(utts)
    ]


def _check(scorer: FrameScorer, network: ExportedNetwork, cmvn: Cmvn, log_priors: np.ndarray) -> Parity:
    """The exported network against ``scorer`` on :func:`cmvn_frames` frames; an fp32 one beyond
    :data:`FP32_TOLERANCE` is an export error."""
    utts = cmvn_frames(cmvn)
    with torch.no_grad():
        ref = [(u, scorer(torch.from_numpy(x)).numpy() + log_priors) for u, x in utts]
    result = parity(ref, ((u, network.loglikes(x) + log_priors) for u, x in utts))
    if network.precision == "fp32" and not result.within(FP32_TOLERANCE):
        raise ValueError(
            f"{network.path}: the exported graph's posteriors differ from PyTorch's ({result}; "
            f"tolerance {FP32_TOLERANCE}): not written"
        )
    if network.precision == "int8" and not result.within(INT8_TOLERANCE):
        log.warning(
            "%s: int8 posteriors beyond %s on frames drawn from the CMVN statistics (%s): measure it on "
            "real data before shipping it",
            network.path,
            INT8_TOLERANCE,
            result,
        )
    return result


def export_bundle(bundle_dir: str | Path, out_dir: str | Path, *, quantize: bool = False, force: bool = False) -> Path:
    """Write ``out_dir``: the bundle in ``bundle_dir`` with its network exported to ONNX (int8 if ``quantize``).

    Everything but ``members/`` is copied; ``network.onnx`` / ``network.int8.onnx``
    takes their place, and ``system.json`` records it (``network``: file, format,
    precision, parity on frames drawn from the CMVN statistics) and what it was
    made from (``exported_from``: the bundle and its members' architectures). Written
    atomically; kept as it is while the source bundle is unchanged, unless ``force``.
    """
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if out_dir.resolve() == bundle_dir.resolve():
        raise ValueError(f"{out_dir}: the exported bundle must go beside {bundle_dir}, not replace it")
    system = load_system(bundle_dir)
    scorer = FrameScorer.of(system)
    precision = "int8" if quantize else "fp32"
    sources = {"bundle": _sha256(bundle_dir / MANIFEST), "network": f"{FORMAT} {precision}"}
    if not force and up_to_date(out_dir, sources):
        return out_dir
    spec = json.loads((bundle_dir / "system.json").read_text(encoding="utf-8"))
    listed = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
    with staged_bundle(out_dir, sources) as tmp:
        for name in listed:
            if name != "system.json" and not name.startswith("members/"):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle_dir / name, tmp / name)
        path = tmp / NETWORK_FILES[precision]
        _export_onnx(scorer, system.cmvn.dim, tmp / NETWORK_FILES["fp32"])
        if quantize:
            _quantize(tmp / NETWORK_FILES["fp32"], path)
            (tmp / NETWORK_FILES["fp32"]).unlink()
        result = _check(
            scorer, ExportedNetwork(path, precision, torch.get_num_threads()), system.cmvn, system.log_priors
        )
        write_json_atomic(
            tmp / "system.json",
            {
                **spec,
                "members": [],
                "network": {
                    "file": path.name,
                    "format": FORMAT,
                    "precision": precision,
                    "opset": OPSET,
                    "inputs": "feats (frames, dim): raw fbank",
                    "outputs": "loglikes (frames, senones)",
                    "parity": {**asdict(result), "on": "frames drawn from the CMVN statistics"},
                },
                "exported_from": {
                    "bundle": str(bundle_dir),
                    "manifest_sha256": sources["bundle"],
                    "members": [{k: v for k, v in m.items() if k != "file"} for m in spec["members"]],
                },
            },
        )
    log.info(
        "%s: %s of %s (%.1f kB; parity with PyTorch: %s)",
        out_dir,
        NETWORK_FILES[precision],
        bundle_dir,
        (out_dir / NETWORK_FILES[precision]).stat().st_size / 1e3,
        result,
    )
    return out_dir
