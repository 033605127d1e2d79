"""Decoding: the n-gram LM, the HCLG graph, hybrid (posterior / prior) WFST decoding and WER scoring.

Serves ``run.sh`` stages 5 (LM and graph) and 12 (decode and score every system, write
each system's bundle); :mod:`bundle` also decodes new audio (``asrdistill decode``).
The decoder itself is ``asrdistill.decoding.decode.decode`` (not re-exported, so
the name ``asrdistill.decoding.decode`` stays the module).
"""

from asrdistill._exports import lazy_exports

_EXPORTS = {  # name -> submodule: imported on first use (see asrdistill._exports)
    "System": "bundle",
    "load_system": "bundle",
    "write_bundle": "bundle",
    "DecodeConfig": "decode",
    "compute_priors": "decode",
    "sweep": "decode",
    "GraphConfig": "hclg",
    "build_graph": "hclg",
    "LmConfig": "lm",
    "prepare_lm": "lm",
    "WerResult": "scoring",
    "wer_report": "scoring",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
