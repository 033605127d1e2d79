"""Data: corpora as Kaldi data dirs, the lexicon and lang dir, waveform augmentation, fbank features and frame streams.

Serves ``run.sh`` stages 1 (data dirs, lexicon, lang) and 2 (features, CMVN),
reads users' own corpora (:mod:`corpus`: any audio folder; :mod:`kaldi_dir`: Kaldi
data dirs in full, validate/fix/split; :mod:`lhotse_io`: lhotse manifests both ways),
makes perturbed copies of a data dir (:mod:`augment`: speed, volume, noise, reverberation, VTLP),
and feeds every later stage: shards hold features, labels and soft targets;
:mod:`frames` turns them into context-window minibatches.
"""

from asrdistill._exports import lazy_exports

_EXPORTS = {  # name -> submodule: imported on first use (see asrdistill._exports)
    "AudioError": "audio",
    "load_audio": "audio",
    "Corpus": "corpus",
    "normalize_transcript": "corpus",
    "read_corpus": "corpus",
    "DataDir": "datadir",
    "AugmentConfig": "augment",
    "augment_data_dir": "augment",
    "fix_data_dir": "kaldi_dir",
    "import_data_dir": "kaldi_dir",
    "import_feats": "kaldi_dir",
    "split_data_dir": "kaldi_dir",
    "validate_data_dir": "kaldi_dir",
    "export_lhotse": "lhotse_io",
    "import_lhotse": "lhotse_io",
    "Cmvn": "features",
    "FbankConfig": "features",
    "compute_cmvn": "features",
    "compute_features": "features",
    "Batch": "frames",
    "FrameConfig": "frames",
    "FrameData": "frames",
    "FrameStream": "frames",
    "iter_utterances": "frames",
    "Lang": "lang",
    "LexiconConfig": "lexicon",
    "build_lang": "lexicon",
    "corpus_vocabulary": "lexicon",
    "read_pron_probs": "lexicon",
    "ALI_PREFIX": "shards",
    "FEATS_PREFIX": "shards",
    "PDF_PREFIX": "shards",
    "SOFT_PREFIX": "shards",
    "ShardManifest": "shards",
    "iter_aligned": "shards",
    "iter_shard": "shards",
    "write_shard": "shards",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
