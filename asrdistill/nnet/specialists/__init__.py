"""Specialists for confusable senones (Hinton et al. 2015, section 5), and their combination with the generalist.

Four steps, each an ``asrdistill specialists-*`` command (``asrdistill/cli/specialists.py``):
groups (:mod:`.groups`), train (:mod:`.training`), eval and cache (:mod:`.combination`);
the settings of all four are :class:`SpecialistConfig` (:mod:`.config`).
"""

from asrdistill.nnet.specialists.combination import (
    cache_combination_targets,
    cache_specialist_targets,
    combine,
    evaluate_specialists,
    specialist_stream,
    stream_accuracy,
)
from asrdistill.nnet.specialists.config import SpecialistConfig
from asrdistill.nnet.specialists.groups import (
    DevStats,
    SenoneGroup,
    dev_statistics,
    find_groups,
    group_senones,
    kmeans,
    pdf_phones,
    read_groups,
    write_groups,
)
from asrdistill.nnet.specialists.training import (
    Specialist,
    is_specialists_dir,
    load_combination,
    load_specialist,
    load_specialists,
    train_specialist,
    train_specialists,
)

__all__ = [
    "SpecialistConfig",
    "SenoneGroup",
    "Specialist",
    "DevStats",
    "dev_statistics",
    "kmeans",
    "find_groups",
    "pdf_phones",
    "write_groups",
    "read_groups",
    "group_senones",
    "train_specialist",
    "train_specialists",
    "load_specialist",
    "load_specialists",
    "is_specialists_dir",
    "load_combination",
    "combine",
    "evaluate_specialists",
    "specialist_stream",
    "stream_accuracy",
    "cache_combination_targets",
    "cache_specialist_targets",
]
