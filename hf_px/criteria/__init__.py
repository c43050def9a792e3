"""Pruning criteria: small objects with one job, `score(...) -> dict[name, Tensor]`, registered by name.

A configured instance (e.g. `PX(head="path")`) can be passed to `hf_px.prune`/`hf_px.score` as `method`.
"""

from .base import Criterion, list_methods, make_criterion, register_method
from .grasp import GraSP
from .magnitude import Magnitude, Random
from .ntk_sap import NTKSAP
from .px import PX
from .px_exact import PXExact
from .snip import SNIP
from .synflow import SynFlow

__all__ = ["Criterion", "list_methods", "make_criterion", "register_method",
           "GraSP", "Magnitude", "NTKSAP", "PX", "PXExact", "Random", "SNIP", "SynFlow"]
