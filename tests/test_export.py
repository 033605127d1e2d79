"""Exported (ONNX fp32) and int8 bundles: parity with PyTorch on real fbank frames, the same decoding, and red
when the exported graph is wrong (a transposed weight, no CMVN, no priors)."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from graph_paths import pdf_sequence
from onnx import numpy_helper
from test_graph import toy_task

from asrdistill.data.features import FbankConfig, compute_cmvn, fbank
from asrdistill.data.frames import context_windows
from asrdistill.data.shards import ShardManifest, write_shard
from asrdistill.decoding import export
from asrdistill.decoding.bundle import _sha256, load_system, write_bundle
from asrdistill.decoding.decode import DecodeConfig
from asrdistill.decoding.export import FP32_TOLERANCE, INT8_TOLERANCE, export_bundle, parity
from asrdistill.nnet.model import FrameDNN, ModelConfig

SR = 16000
LEFT, RIGHT = 2, 1
TOLERANCE = {"fp32": FP32_TOLERANCE, "int8": INT8_TOLERANCE}
TEXT = {"u0": "BA KA", "u1": "KA BA", "u2": "AB", "u3": "BA KA AB"}


def _sound(i: int, seconds: float = 1.2) -> np.ndarray:
    """A chirp between pauses, over noise: fbank frames that vary, with a mean and variance far from 0 and 1."""
    t = np.arange(int(seconds * SR)) / SR
    f0, f1 = 150.0 * (i + 1), 2500.0 - 300.0 * i
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
    gate = ((t > 0.2) & (t < seconds - 0.25)).astype(float)
    return (0.4 * gate * chirp + 0.02 * np.random.default_rng(i).normal(size=t.size)).astype(np.float32)


def _alignment(words: str, frames: int, lang, tree, topo) -> np.ndarray:
    """Senones of SIL, ``words``, SIL spread over the pause, the chirp and the pause of :func:`_sound`'s frames."""
    seq = pdf_sequence([("SIL",), *(lang.pronunciations()[w][0] for w in words.split()), ("SIL",)], lang, tree, topo)
    sil = topo.num_states[lang.phone_id["SIL"]]
    start, end = 20, frames - 23  # the chirp's frames (10 ms shift)

    def stretch(part: np.ndarray, n: int) -> np.ndarray:
        return part[np.linspace(0, len(part) - 1, n).round().astype(int)]

    return np.concatenate(
        [stretch(seq[:sil], start), stretch(seq[sil:-sil], end - start), stretch(seq[-sil:], frames - end)]
    ).astype(np.int32)


def _trained(rows, pdfs, cmvn, num_pdfs: int) -> FrameDNN:
    """A 2 x 32 ReLU net (a square hidden weight, for the transposition fault) fitted to the toy alignments, so
    that its posteriors are peaked and decoding follows them."""
    torch.manual_seed(0)
    model = FrameDNN(ModelConfig(preset="tiny", hidden_layers=2), (LEFT + 1 + RIGHT) * 40, num_pdfs)
    x = torch.cat([context_windows(cmvn.apply(torch.from_numpy(r["feats"])), LEFT, RIGHT) for _, r in rows])
    y = torch.from_numpy(np.concatenate([p["pdf"] for _, p in pdfs])).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A PyTorch bundle (2 x 32 ReLU net, so a hidden weight is square), its fp32 and int8 exports, the real
    fbank frames of four utterances, and those utterances as audio with transcripts."""
    d = tmp_path_factory.mktemp("export")
    lang, tree, topo, _ = toy_task(d)
    config = FbankConfig()
    feats = ShardManifest(d / "fbank", "feats", meta={"dim": 40, "config": config.extraction_dict()})
    labels = ShardManifest(d / "ali", "pdf")
    corpus = d / "corpus" / "spk" / "ch"
    corpus.mkdir(parents=True)
    rows, pdfs = [], []
    for i, (utt, words) in enumerate(TEXT.items()):
        x = _sound(i)
        sf.write(corpus / f"spk-ch-{utt}.flac", x, SR)
        rows.append((f"spk-ch-{utt}", {"feats": fbank(x, config).astype(np.float16)}))
        pdfs.append((f"spk-ch-{utt}", {"pdf": _alignment(words, len(rows[-1][1]["feats"]), lang, tree, topo)}))
    (corpus / "spk-ch.trans.txt").write_text("".join(f"spk-ch-{u} {t}\n" for u, t in TEXT.items()))
    feats.shards.append(write_shard(d / "fbank" / "feats-000000.tar", rows))
    feats.save()
    compute_cmvn(feats).save(d / "fbank" / "cmvn.json")
    labels.shards.append(write_shard(d / "ali" / "pdf-000000.tar", pdfs))
    labels.save()
    (d / "exp" / "student").mkdir(parents=True)
    for name in ("tree.json", "topo.json"):
        shutil.copy(d / name, d / "exp" / name)
    model = _trained(rows, pdfs, compute_cmvn(feats), tree.num_pdfs)
    torch.save(
        {
            **model.describe(),
            "model": model.state_dict(),
            "config": {"frames": {"left": LEFT, "right": RIGHT}},
            "epoch": 1,
            "step": 1,
            "dev": {},
        },
        d / "exp" / "student" / "best.pt",
    )
    bundle = write_bundle(
        d / "exp" / "student",
        d / "exp" / "student" / "bundle",
        feats_dir=d / "fbank",
        labels_dir=d / "ali",
        tree_dir=d / "exp",
        graph_dir=d / "graph",
        lang_dir=d / "lang",
        decode_config=DecodeConfig(nj=1),
    )
    return SimpleNamespace(
        d=d,
        feats=feats,
        corpus=d / "corpus",
        bundle=bundle,
        exported={
            "fp32": export_bundle(bundle, d / "exp" / "student" / "bundle_fp32"),
            "int8": export_bundle(bundle, d / "exp" / "student" / "bundle_int8", quantize=True),
        },
    )


def _parity(made, bundle):
    return parity(load_system(made.bundle).posteriors(made.feats), load_system(bundle).posteriors(made.feats))


def _decoded(bundle, corpus, out):
    """(WER, text, ctm) of decoding ``corpus`` with ``bundle`` the way `asrdistill decode` does."""
    report = load_system(bundle).decode_corpus(corpus, out)
    return report.wer, (out / "text").read_text(), (out / "ctm").read_text()


def _tampered(bundle, out, fault):
    """A copy of an exported bundle whose graph has ``fault``, its manifest updated to match (a wrong export,
    not a corrupted file)."""
    shutil.copytree(bundle, out)
    name = json.loads((out / "system.json").read_text())["network"]["file"]
    model = onnx.load(out / name)
    inits = {i.name: i for i in model.graph.initializer}
    if fault == "transposed weight":  # the square hidden layer (int8: its quantized weight)
        names = [n for n in inits if "hidden.2.weight" in n and numpy_helper.to_array(inits[n]).ndim == 2]
        changes = {names[0]: numpy_helper.to_array(inits[names[0]]).T.copy()}
    elif fault == "no CMVN":
        changes = {"cmvn_shift": np.zeros(40, np.float32), "cmvn_scale": np.ones(40, np.float32)}
    else:
        changes = {"log_priors": np.zeros_like(numpy_helper.to_array(inits["log_priors"]))}
    for n, value in changes.items():
        assert value.shape == numpy_helper.to_array(inits[n]).shape
        inits[n].CopyFrom(numpy_helper.from_array(value, n))
    onnx.save(model, out / name)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"][name] = _sha256(out / name)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_exported_posteriors_match_pytorch_on_real_frames(made, precision):
    bundle = made.exported[precision]
    result = _parity(made, bundle)
    assert result.frames > 400 and result.within(TOLERANCE[precision]), result
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    network = export.NETWORK_FILES[precision]
    assert files[network] == _sha256(bundle / network) and not any(f.startswith("members/") for f in files)
    spec = json.loads((bundle / "system.json").read_text())
    assert spec["members"] == [] and spec["network"]["precision"] == precision
    assert spec["exported_from"]["members"][0]["model_config"]["hidden_layers"] == 2
    assert str(load_system(bundle).network) == f"{network} (onnx {precision})"


def test_exported_and_int8_bundles_decode_like_pytorch(made, tmp_path):
    """Random weights on four toy utterances: the WER itself means nothing, so besides WER within 0.1 point the
    decoded words and their times (the CTM, from the best path's alignment) must be the same."""
    wer, text, ctm = _decoded(made.bundle, made.corpus, tmp_path / "pytorch")
    assert text.count("\n") == len(TEXT) and ctm
    for precision, bundle in made.exported.items():
        wer_x, text_x, ctm_x = _decoded(bundle, made.corpus, tmp_path / precision)
        assert abs(wer_x - wer) <= 0.1 and text_x == text and ctm_x == ctm, precision
        assert (
            f"{export.NETWORK_FILES[precision]} (onnx {precision})"
            in (tmp_path / precision / "log" / "decode.log").read_text()
        )


@pytest.mark.parametrize("fault", ["transposed weight", "no CMVN", "no priors"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_wrong_graph_fails_parity_and_changes_the_decode(made, tmp_path, precision, fault):
    """Every fault breaks posterior parity. A wrong weight or missing CMVN also changes the decode; a missing
    prior leaves this toy's words and times as they are (a confident net on a four-word graph), so posterior
    parity is the check that catches it."""
    bad = _tampered(made.exported[precision], tmp_path / "bad", fault)
    result = _parity(made, bad)
    assert not result.within(TOLERANCE[precision]), (fault, result)
    if fault != "no priors":
        assert (
            _decoded(bad, made.corpus, tmp_path / "bad_decode")[1:]
            != _decoded(made.bundle, made.corpus, tmp_path / "decode")[1:]
        )


def test_export_refuses_a_graph_that_differs_from_pytorch(made, tmp_path, monkeypatch):
    real = export._export_onnx

    def without_priors(scorer, dim, path):  # an exporter that loses the priors
        real(scorer, dim, path)
        model = onnx.load(path)
        (prior,) = [i for i in model.graph.initializer if i.name == "log_priors"]
        prior.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(prior)), "log_priors"))
        onnx.save(model, path)

    monkeypatch.setattr(export, "_export_onnx", without_priors)
    with pytest.raises(ValueError, match=r"network.onnx: the exported graph's posteriors differ from PyTorch's"):
        export_bundle(made.bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # nothing half-written


def test_exported_bundle_is_verified_kept_and_not_exported_again(made, tmp_path):
    fp32 = made.exported["fp32"]
    before = (fp32 / "manifest.json").stat().st_mtime_ns
    export_bundle(made.bundle, fp32)  # source unchanged: kept
    assert (fp32 / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match=r"bundle_fp32: already an exported bundle \(network.onnx"):
        export_bundle(fp32, tmp_path / "again")
    changed = tmp_path / "changed"
    shutil.copytree(fp32, changed)
    with open(changed / "network.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"changed/network.onnx: sha256 differs"):
        load_system(changed)
    junk = _tampered(fp32, tmp_path / "junk", "no priors")
    (junk / "network.onnx").write_bytes(b"not onnx")
    m = json.loads((junk / "manifest.json").read_text())
    m["files"]["network.onnx"] = _sha256(junk / "network.onnx")
    (junk / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"junk/network.onnx: not a usable exported network"):
        load_system(junk)
