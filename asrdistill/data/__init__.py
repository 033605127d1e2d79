"""Data: corpora as Kaldi data dirs, the lexicon and lang dir, fbank features and frame streams.

Serves ``run.sh`` stages 1 (data dirs, lexicon, lang) and 2 (features, CMVN),
reads users' own corpora (:mod:`corpus`: any audio folder; :mod:`kaldi_dir`: Kaldi
data dirs in full, validate/fix/split; :mod:`lhotse_io`: lhotse manifests both ways),
and feeds every later stage: shards hold features, labels and soft targets;
:mod:`frames` turns them into context-window minibatches.
"""

from asrdistill.data.audio import AudioError, load_audio
from asrdistill.data.corpus import Corpus, normalize_transcript, read_corpus
from asrdistill.data.datadir import DataDir
from asrdistill.data.features import Cmvn, FbankConfig, compute_cmvn, compute_features
from asrdistill.data.frames import Batch, FrameConfig, FrameStream, iter_utterances
from asrdistill.data.kaldi_dir import fix_data_dir, import_data_dir, import_feats, split_data_dir, validate_data_dir
from asrdistill.data.lang import Lang
from asrdistill.data.lhotse_io import export_lhotse, import_lhotse
from asrdistill.data.lexicon import LexiconConfig, build_lang, corpus_vocabulary
from asrdistill.data.shards import (ALI_PREFIX, FEATS_PREFIX, PDF_PREFIX, SOFT_PREFIX, ShardManifest, iter_aligned,
                                    iter_shard, write_shard)

__all__ = ["AudioError", "load_audio", "Corpus", "normalize_transcript", "read_corpus", "DataDir", "fix_data_dir", "import_data_dir", "import_feats",
           "split_data_dir", "validate_data_dir", "export_lhotse", "import_lhotse", "Cmvn", "FbankConfig", "compute_cmvn", "compute_features",
           "Batch", "FrameConfig", "FrameStream", "iter_utterances", "Lang", "LexiconConfig", "build_lang",
           "corpus_vocabulary", "ALI_PREFIX", "FEATS_PREFIX", "PDF_PREFIX", "SOFT_PREFIX", "ShardManifest",
           "iter_aligned", "iter_shard", "write_shard"]
