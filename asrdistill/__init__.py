"""asrdistill: knowledge distillation for frame-level speech acoustic models.

Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network",
section 4 (speech), as a toolkit: corpus preparation, filterbank features, a
GMM-HMM aligner that produces senone labels, DNN teachers and their ensemble,
the distilled student, and WFST decoding for WER. The KD loss other ASR code
imports lives in :mod:`asrdistill.kd`. A trained system ships as a bundle
that :func:`load_system` loads: ``asrdistill.load_system("exp/student_seed1/bundle").transcribe("my_audio/")``.
"""

__version__ = "0.1.0"
__all__ = ["load_system", "__version__"]


def __getattr__(name: str):
    # lazy, so that `import asrdistill` (e.g. for the version) does not import torch
    if name == "load_system":
        from asrdistill.decoding.bundle import load_system

        return load_system
    raise AttributeError(f"module 'asrdistill' has no attribute {name!r}")
