"""hf_px: find lottery tickets in vision models with PX (Path eXclusion) and its baselines."""

from .apply import apply_masks_
from .batchnorm import recalibrate_batchnorm_
from .checkpoint import load_sparse, save_sparse
from .criteria import Criterion, list_methods, register_method
from .errors import (ConfigError, DataError, HfPxError, HubError, MaskError, MaskViolation, ModelError,
                     PushError, StaleStructure, TrainingDiverged, UnknownMethodError)
from .masks import check_masks, density_schedule, global_density, layer_densities, masks_from_scores
from .pruning import PruneSpec, auto_choice, prune, score
from .targets import find_head, prunable_weights

__version__ = "0.1.0"

__all__ = [
    "score", "prune", "PruneSpec", "auto_choice", "list_methods", "register_method", "Criterion",
    "masks_from_scores", "density_schedule", "layer_densities", "global_density", "check_masks", "apply_masks_",
    "find_head", "prunable_weights", "load_sparse", "save_sparse",
    "HfPxError", "ConfigError", "DataError", "ModelError", "HubError", "UnknownMethodError", "MaskError",
    "MaskViolation", "StaleStructure", "PushError", "TrainingDiverged", "recalibrate_batchnorm_",
]
