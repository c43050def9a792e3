"""Pruning criteria: small objects with one job, `score(...) -> dict[name, Tensor]`, registered by name."""

from .base import Criterion, list_methods, make_criterion, register_method
from . import grasp, magnitude, ntk_sap, px, px_exact, snip, synflow  # noqa: F401  (they register themselves)

__all__ = ["Criterion", "list_methods", "make_criterion", "register_method"]
