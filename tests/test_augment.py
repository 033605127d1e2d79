"""Waveform augmentation (asrdistill.data.augment) and the augment-data-dir command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrdistill import cli
from asrdistill.data.augment import (
    AugmentConfig,
    add_noise,
    augment_data_dir,
    colored_noise,
    make_rirs,
    reverberate,
    speed_perturb,
    vtlp,
)
from asrdistill.data.datadir import DataDir
from asrdistill.data.features import FbankConfig, fbank
from asrdistill.fileio import read_done, read_skipped

SR = 16000


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A gliding harmonic tone with bursts of silence: enough structure for resampling and SNR checks."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 6))
    x *= (np.sin(2 * np.pi * 2.3 * t) > -0.3).astype(float)
    return (0.2 * x + 0.001 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturbed_copy_lasts_len_over_factor_and_its_fbank_frames_follow(factor):
    x = _speechlike(2.0, 0)
    y = speed_perturb(x, factor, SR)
    assert abs(len(y) - len(x) / factor) <= 2
    cfg = FbankConfig()
    shift, window = SR * cfg.frame_shift_ms // 1000, SR * cfg.frame_length_ms // 1000
    frames = fbank(y, cfg).shape[0]
    assert frames == 1 + (len(y) - window) // shift  # snip-edges framing of the perturbed length
    assert abs(frames - fbank(x, cfg).shape[0] / factor) <= 2
    # the pitch moves with the tempo (sox speed, not tempo): the spectrum's peak scales by the factor
    tone = np.sin(2 * np.pi * 1000 * np.arange(2 * SR) / SR).astype(np.float32)
    peak_hz = np.argmax(np.abs(np.fft.rfft(speed_perturb(tone, factor, SR)[:SR])))  # 1 s: bins of 1 Hz
    assert abs(peak_hz - 1000 * factor) <= 2


@pytest.mark.parametrize("kind", ["white", "pink"])
@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
def test_noise_is_added_at_the_requested_snr(kind, snr):
    x = _speechlike(1.5, 1)
    y = add_noise(x, colored_noise(np.random.default_rng(3), len(x), kind), snr)
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert abs(measured - snr) < 0.5


def test_pink_noise_has_more_low_than_high_frequency_power():
    n = colored_noise(np.random.default_rng(0), 32000, "pink")
    power = np.abs(np.fft.rfft(n)) ** 2
    assert power[100:1000].mean() > 10 * power[10000:15000].mean()


def test_reverberation_changes_the_signal_and_keeps_its_length_and_timing():
    x = _speechlike(1.0, 2)
    rirs = make_rirs(AugmentConfig(num_rirs=2, rt60_s=[0.4, 0.6]))
    for rir in rirs:
        assert rir[0] == 1.0 and len(rir) > 0.1 * SR  # direct path at lag 0, then a tail
        y = reverberate(x, rir)
        assert len(y) == len(x)
        assert np.corrcoef(x, y)[0, 1] < 0.98  # changed
        probe = np.random.default_rng(0).standard_normal(4000)  # white: its cross-correlation shows the RIR
        lag = np.argmax(np.correlate(reverberate(probe, rir), probe, "full")) - (len(probe) - 1)
        assert lag == 0  # not moved in time: the labels of the original still fit


def _spectral_peak_hz(x: np.ndarray) -> float:
    """Where the 512-point short-time magnitude spectrum (what fbank reads) peaks, interpolated between bins."""
    from scipy.signal import stft

    freqs, _, spec = stft(x, fs=SR, nperseg=512)
    mag = np.abs(spec).mean(axis=1)
    k = int(np.argmax(mag))
    near = slice(max(k - 2, 0), k + 3)
    return float(np.sum(freqs[near] * mag[near]) / np.sum(mag[near]))


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_the_spectrum_by_alpha_below_the_knee_and_keeps_length_and_nyquist(alpha):
    t = np.arange(SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = vtlp(tone, alpha, SR)
    assert len(y) == len(tone)
    assert abs(_spectral_peak_hz(y) - 1000 * alpha) < 8  # bins are 31.25 Hz wide
    high = (0.3 * np.sin(2 * np.pi * 7700 * t)).astype(np.float32)  # near Nyquist: the map's fixed end
    assert abs(_spectral_peak_hz(vtlp(high, alpha, SR)) - 7700) < 60


def test_config_rejects_bad_values_naming_the_key():
    with pytest.raises(ValueError, match="speeds"):
        AugmentConfig(speeds=[0.9, 0.9])
    with pytest.raises(ValueError, match="noise_types"):
        AugmentConfig(noise_copies=1, noise_types=["music"])
    with pytest.raises(ValueError, match="rt60_s"):
        AugmentConfig(rt60_s=[0.8, 0.2])
    with pytest.raises(ValueError, match="volume"):
        AugmentConfig(volume=[2.0])
    with pytest.raises(ValueError, match="vtlp_range"):
        AugmentConfig(vtlp_range=[1.1, 0.9])


def _data_dir(tmp_path, bad: bool = True) -> DataDir:
    d = DataDir()
    for i, spk in enumerate(["s1", "s1", "s2"]):
        path = tmp_path / "audio" / f"u{i}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _speechlike(0.6 + 0.1 * i, i), SR)
        d.wav[f"{spk}-u{i}"], d.text[f"{spk}-u{i}"], d.utt2spk[f"{spk}-u{i}"] = str(path), "A B", spk
    if bad:
        (tmp_path / "audio" / "broken.flac").write_bytes(b"not audio")
        d.wav["s2-broken"], d.text["s2-broken"], d.utt2spk["s2-broken"] = str(tmp_path / "audio/broken.flac"), "C", "s2"
    return d.save(tmp_path / "data")


def test_command_writes_new_utterances_and_speakers_and_every_input_is_made_or_skipped(tmp_path):
    src = _data_dir(tmp_path)
    (tmp_path / "aug.yaml").write_text(
        "augment:\n  noise_copies: 1\n  reverb_copies: 1\n  num_rirs: 2\n  noise_types: [babble, pink]\n"
        "  vtlp_copies: 1\n"
    )
    out = tmp_path / "train_sp"
    assert cli.main(["augment-data-dir", str(src), str(out), "--config", str(tmp_path / "aug.yaml"), "--nj", "1"]) == 0
    inp, aug = DataDir.load(src), DataDir.load(out)
    skipped = read_skipped(out / "skipped.tsv")
    assert set(skipped) == {"s2-broken"}
    prefixes = ["sp0.9", "sp1.0", "sp1.1", "noise1", "rvb1", "vtlp1"]
    made = {u.split("-", 1)[1] for u in aug.wav}
    assert made | set(skipped) == set(inp.wav) and not made & set(skipped)  # every input: made or skipped
    for utt in set(inp.wav) - set(skipped):
        for p in prefixes:
            new = f"{p}-{utt}"
            assert aug.utt2spk[new] == f"{p}-{inp.utt2spk[utt]}" and aug.text[new] == inp.text[utt]
            frames = sf.info(aug.wav[new]).frames
            assert abs(frames / SR - aug.utt2dur[new]) <= 0.0005  # utt2dur: 3 decimals
            factor = float(p[2:]) if p.startswith("sp") else 1.0
            assert abs(frames - sf.info(inp.wav[utt]).frames / factor) <= 2
            assert aug.wav[new].startswith(str(out.resolve() / "audio"))
    assert not set(aug.wav) & set(inp.wav) and not set(aug.spk2utt) & set(inp.spk2utt)
    assert read_done(out, "augment")["copies"] == prefixes


def test_copies_depend_on_seed_and_id_only_and_a_rerun_resumes(tmp_path):
    src = _data_dir(tmp_path, bad=False)
    cfg = AugmentConfig(speeds=[1.1], noise_copies=1, noise_types=["white"])
    a = augment_data_dir(src, tmp_path / "a", cfg, nj=1)
    b = augment_data_dir(src, tmp_path / "b", cfg, nj=2)
    for utt in a.wav:
        assert np.array_equal(sf.read(a.wav[utt])[0], sf.read(b.wav[utt])[0])
    victim = a.wav["noise1-s1-u0"]
    (tmp_path / "a" / ".augment.done").unlink()  # as if killed before the end, after writing the others
    Path(victim).unlink()
    kept = {u: Path(p).stat().st_mtime_ns for u, p in a.wav.items() if p != victim}
    again = augment_data_dir(src, tmp_path / "a", cfg, nj=1)
    assert again.wav == a.wav
    assert {u: Path(p).stat().st_mtime_ns for u, p in a.wav.items() if p != victim} == kept  # reused, not redone
    assert np.array_equal(sf.read(victim)[0], sf.read(b.wav["noise1-s1-u0"])[0])  # the missing copy, the same
    (tmp_path / "a" / ".augment.done").unlink()  # killed again, then resumed under another seed: nothing reused
    other = augment_data_dir(src, tmp_path / "a", AugmentConfig(speeds=[1.1], noise_copies=1, seed=1), nj=1)
    assert not np.array_equal(sf.read(other.wav["noise1-s1-u0"])[0], sf.read(b.wav["noise1-s1-u0"])[0])


# ----------------------------------------------------------------------------- the voice-shift test set
def _corpus_variants(seeds=range(4)) -> set[str]:
    from data_prep import synthetic

    used = {s.variant for seed in seeds for s in synthetic.make_speakers(seed, 64, 0.07, 0.48)}
    return used | set(synthetic._MALE_VARIANTS + synthetic._FEMALE_VARIANTS)


def test_shift_voices_are_of_a_synthesiser_kind_no_corpus_talker_uses():
    from data_prep.shift import SHIFT_VARIANTS, check_held_out, synthesiser_kind

    kinds = check_held_out(_corpus_variants())
    assert kinds == {2, 5, 6} and {synthesiser_kind(v) for v in _corpus_variants()} == {0, 1, 3, 4}
    assert not set(SHIFT_VARIANTS) & _corpus_variants()


@pytest.mark.parametrize("injected", ["klatt2", "robosoft"])  # a shift variant itself; another variant of its kind
def test_a_corpus_talker_with_a_shift_voice_is_refused(monkeypatch, tmp_path, injected):
    from data_prep import synthetic
    from data_prep.shift import synthesize_shift_set

    tiny = dict(hours=0.005, num_speakers=3, lm_sentences=50, progress=False, nj=1)
    synthetic.synthesize_corpus(tmp_path, seed=0, **tiny)
    monkeypatch.setattr(synthetic, "_MALE_VARIANTS", (*synthetic._MALE_VARIANTS, injected))
    with pytest.raises(ValueError, match=injected):
        synthesize_shift_set(tmp_path, num_speakers=2, num_utterances=2, nj=1)


def test_shift_set_speaks_test_sentences_with_new_talkers_under_recorded_conditions(tmp_path):
    from data_prep import synthetic
    from data_prep.shift import SHIFT_VARIANTS, SUBSET, synthesize_shift_set

    ls_dir = synthetic.synthesize_corpus(
        tmp_path, seed=0, hours=0.02, num_speakers=3, lm_sentences=50, nj=1, progress=False
    )
    test_text = {
        line.split(" ", 1)[1] for f in (ls_dir / "test").rglob("*.trans.txt") for line in f.read_text().splitlines()
    }
    corpus_spks = {p.name for s in synthetic.SUBSETS for p in (ls_dir / s).iterdir() if p.is_dir()}
    assert (
        cli.main(
            ["synth-shift-set", "--corpus", str(tmp_path), "--num-speakers", "3", "--utterances", "6", "--nj", "1"]
        )
        == 0
    )
    out = ls_dir / SUBSET
    trans = {
        line.split(" ", 1)[0]: line.split(" ", 1)[1]
        for f in out.rglob("*.trans.txt")
        for line in f.read_text().splitlines()
    }
    assert len(trans) == min(6, len(test_text)) and set(trans.values()) <= test_text
    assert {u.split("-")[0] for u in trans}.isdisjoint(corpus_spks)
    for utt in trans:
        spk, ch, _ = utt.split("-")
        assert sf.info(out / spk / ch / f"{utt}.flac").samplerate == SR
    rows = [r.split("\t") for r in (out / "conditions.tsv").read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(trans) and {r[1] for r in rows} <= {"clean", "noise", "reverb"}
    speakers = [r.split("\t") for r in (out / "speakers.tsv").read_text().splitlines()[1:]]
    assert {r[1] for r in speakers} <= set(SHIFT_VARIANTS) and {r[2] for r in speakers} <= {"2", "5", "6"}
    from data_prep.librispeech import prepare_librispeech

    data = prepare_librispeech(tmp_path, [SUBSET], tmp_path / "data")[SUBSET]  # the recipe's data/test_shift
    assert data.text == trans
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")}
    synthesize_shift_set(tmp_path, num_speakers=3, num_utterances=6, nj=1)  # same parameters: reused
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.flac")} == before


def test_augment_conf_is_the_readme_conf_with_augmentation_on():
    from asrdistill.config import load_section, read_yaml

    conf = Path(__file__).parents[1] / "recipes" / "librispeech" / "conf"
    augmented = read_yaml(conf / "synthetic_augment.yaml")
    assert load_section(conf / "synthetic_augment.yaml", "augment", AugmentConfig).enabled
    augmented.pop("augment")
    assert augmented == read_yaml(conf / "synthetic_cpu.yaml")
