"""Decoding: the n-gram LM, the HCLG graph, hybrid (posterior / prior) WFST decoding and WER scoring.

Serves ``run.sh`` stages 5 (LM and graph) and 12 (decode and score every system, write
each system's bundle); :mod:`bundle` also decodes new audio (``asrdistill decode``).
The decoder itself is ``asrdistill.decoding.decode.decode`` (not re-exported, so
the name ``asrdistill.decoding.decode`` stays the module).
"""

from asrdistill.decoding.bundle import System, load_system, write_bundle
from asrdistill.decoding.decode import DecodeConfig, compute_priors, sweep
from asrdistill.decoding.hclg import GraphConfig, build_graph
from asrdistill.decoding.lm import LmConfig, prepare_lm
from asrdistill.decoding.scoring import WerResult, wer_report

__all__ = ["System", "load_system", "write_bundle", "DecodeConfig", "compute_priors", "sweep", "GraphConfig", "build_graph", "LmConfig",
           "prepare_lm", "WerResult", "wer_report"]
