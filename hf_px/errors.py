"""The error classes hf_px raises for anything a user can cause, all in one place.

Each also subclasses the builtin a caller would expect (`ValueError`, `KeyError`, `OSError`,
`RuntimeError`), and its message says what was given, what is valid and how to fix it.
"""


class HfPxError(Exception):
    """Base class of every error hf_px raises on purpose."""


class ConfigError(HfPxError, ValueError):
    """An argument or option is out of range, of the wrong kind, or matches nothing."""


class UnknownMethodError(HfPxError, KeyError):
    """A pruning method name that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class DataError(HfPxError, ValueError):
    """The scoring batches are empty, malformed, or hold NaN/inf."""


class ModelError(HfPxError, ValueError):
    """The model cannot be pruned, saved or loaded as asked (no prunable weights, an unsupported operation,
    a damaged checkpoint, ...)."""


class MaskError(HfPxError, ValueError):
    """Masks and a model disagree: a mask names no parameter, has another shape, is not boolean, or a weight
    it marks as pruned is not zero."""


class MaskViolation(HfPxError, RuntimeError):
    """A pruned weight (or its optimizer state) became non-zero during training: a bug, the run stops."""


class TrainingDiverged(HfPxError, RuntimeError):
    """The fine-tuning loss became non-finite, or stayed far above where it started: the run stops and nothing
    is saved as a finished checkpoint (the last complete epoch's state is kept)."""


class StaleStructure(ModelError):
    """The model's op sequence no longer matches the trace its cuts were found on."""


class HubError(HfPxError, OSError):
    """The Hugging Face Hub cannot be reached (no network, offline mode), or refused a request or a push."""


PushError = HubError   # what a failed push raises (the name callers of push_folder know)
