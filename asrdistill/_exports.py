"""Lazy re-exports for the subpackages' ``__init__``: a part is imported when first used.

So that a job importing one module imports only what that module needs: the
graph builder (``asrdistill.decoding.hclg``, which needs ``Lang``,
``ContextTree`` and ``Topology``) runs without torch, whose ~0.5 GB resident
would add to the build's peak memory.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``package.<exports[name]>`` on first use of ``name``."""

    def __getattr__(name: str) -> object:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
