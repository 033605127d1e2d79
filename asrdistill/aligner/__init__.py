"""Built-in GMM-HMM aligner: the senone labels every DNN learns from.

Serves ``run.sh`` stages 3 (flat-start monophones, :mod:`mono`) and 4 (decision
tree over triphone states, tied-state triphones on deltas or LDA+MLLT
(:mod:`lda_mllt`), frame labels: :mod:`tree`, :mod:`triphone`, :mod:`align`).
:mod:`hmm` is the re-estimation/alignment loop both stages share;
:mod:`utt_graph` builds each utterance's training graph (every pronunciation,
optional silence); :mod:`kaldi_import` takes Kaldi pdf alignments instead;
:mod:`kaldi_export` writes them out. Every pass (mono and triphone training,
the label pass) lists the utterances it cannot align in its ``skipped.tsv``
with the reason (e.g. fewer frames than HMM states on the transcript's
shortest path) and goes on with the rest; the Viterbi search is exact, so
there is no beam to widen and retry with.
"""

from asrdistill.aligner.align import AlignConfig, align_subset, estimate_pron_probs, read_pron_probs
from asrdistill.aligner.hmm import HmmModel, LoopConfig, train_gmm_hmm
from asrdistill.aligner.kaldi_export import export_alignments, write_ark_scp
from asrdistill.aligner.kaldi_import import import_kaldi_alignments
from asrdistill.aligner.mono import MonoConfig, train_mono
from asrdistill.aligner.tree import ContextTree, TreeConfig, build_tree
from asrdistill.aligner.triphone import TriConfig, train_triphone
from asrdistill.aligner.utt_graph import Transcript, UttGraph, build_graph

__all__ = ["AlignConfig", "align_subset", "estimate_pron_probs", "read_pron_probs", "Transcript", "UttGraph",
           "build_graph", "HmmModel", "LoopConfig", "train_gmm_hmm", "import_kaldi_alignments", "export_alignments",
           "write_ark_scp",
           "MonoConfig", "train_mono", "ContextTree", "TreeConfig", "build_tree", "TriConfig", "train_triphone"]
