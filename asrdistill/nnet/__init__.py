"""Frame DNNs: the model, its training (hard labels or distillation) and teacher ensembles.

Serves ``run.sh`` stages 6 (baseline), 7 (teachers), 8 (ensemble soft targets),
9 (students) and 10 (the section-6 fraction runs), and 11, the optional specialists
of the paper's section 5 (:mod:`asrdistill.nnet.specialists`). The KD loss itself is
:mod:`asrdistill.kd`; the training entry point is ``asrdistill.nnet.train.train``
(not re-exported here, so the name ``asrdistill.nnet.train`` stays the module).
Its parts beside it: ``targets`` (what a run learns from), ``schedule``, ``checkpoint``, ``metrics`` and
``monitor`` (closeness to the ensemble each epoch), ``transfer`` (extra audio the teachers label, for students).
"""

from asrdistill.nnet.ensemble import (
    cache_soft_targets,
    combine_logits,
    ensemble_logprobs,
    frame_accuracy,
    load_teachers,
    logits_stream,
    posterior_stream,
)
from asrdistill.nnet.model import FrameDNN, ModelConfig, load_model
from asrdistill.nnet.specialists import (
    SenoneGroup,
    Specialist,
    SpecialistConfig,
    cache_combination_targets,
    cache_specialist_targets,
    combine,
    evaluate_specialists,
    find_groups,
    group_senones,
    load_specialist,
    load_specialists,
    read_groups,
    specialist_stream,
    stream_accuracy,
    train_specialist,
    train_specialists,
    write_groups,
)
from asrdistill.nnet.train import DistillConfig, TrainConfig
from asrdistill.nnet.transfer import label_transfer

__all__ = [
    "cache_soft_targets",
    "combine_logits",
    "ensemble_logprobs",
    "frame_accuracy",
    "load_teachers",
    "logits_stream",
    "posterior_stream",
    "FrameDNN",
    "ModelConfig",
    "load_model",
    "DistillConfig",
    "TrainConfig",
    "SenoneGroup",
    "Specialist",
    "SpecialistConfig",
    "cache_combination_targets",
    "cache_specialist_targets",
    "combine",
    "evaluate_specialists",
    "find_groups",
    "group_senones",
    "load_specialist",
    "load_specialists",
    "read_groups",
    "specialist_stream",
    "stream_accuracy",
    "train_specialist",
    "train_specialists",
    "write_groups",
    "label_transfer",
]
