"""Built-in GMM-HMM aligner: the senone labels every DNN learns from.

Serves ``run.sh`` stages 3 (flat-start monophones, :mod:`mono`) and 4 (decision
tree over triphone states, tied-state triphones on deltas or LDA+MLLT
(:mod:`lda_mllt`), frame labels: :mod:`tree`, :mod:`triphone`, :mod:`align`).
:mod:`hmm` is the re-estimation/alignment loop both stages share, :mod:`hmm_model`
the model it trains (Gaussians, topology, feature transform);
:mod:`utt_graph` builds each utterance's training graph (every pronunciation,
optional silence); :mod:`kaldi_import` takes Kaldi pdf alignments instead;
:mod:`kaldi_export` writes them out. Every pass (mono and triphone training,
the label pass) lists the utterances it cannot align in its ``skipped.tsv``
with the reason (e.g. fewer frames than HMM states on the transcript's
shortest path) and goes on with the rest; the Viterbi search is exact, so
there is no beam to widen and retry with.
"""

from asrdistill._exports import lazy_exports

_EXPORTS = {  # name -> submodule: imported on first use (see asrdistill._exports)
    "AlignConfig": "align",
    "align_subset": "align",
    "estimate_pron_probs": "align",
    "read_pron_probs": "align",
    "Transcript": "utt_graph",
    "UttGraph": "utt_graph",
    "build_utt_graph": "utt_graph",
    "HmmModel": "hmm_model",
    "LoopConfig": "hmm",
    "train_gmm_hmm": "hmm",
    "import_kaldi_alignments": "kaldi_import",
    "export_alignments": "kaldi_export",
    "write_ark_scp": "kaldi_export",
    "MonoConfig": "mono",
    "train_mono": "mono",
    "ContextTree": "tree",
    "TreeConfig": "tree",
    "build_tree": "tree",
    "TriConfig": "triphone",
    "train_triphone": "triphone",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
