"""asrdistill: knowledge distillation for frame-level speech acoustic models.

Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network",
section 4 (speech), as a toolkit: corpus preparation, filterbank features, a
GMM-HMM aligner that produces senone labels, DNN teachers and their ensemble,
the distilled student, and WFST decoding for WER. The KD loss other ASR code
imports lives in :mod:`asrdistill.kd`.
"""

__version__ = "0.1.0"
