"""The few error classes hf_px raises for anything a user can cause.

Each also subclasses the builtin a caller would expect (`ValueError`, `KeyError`), and its message says
what was given, what is valid and how to fix it.
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
    """The model cannot be pruned as asked (no prunable weights, an unsupported operation, ...)."""


class HubError(HfPxError, OSError):
    """The Hugging Face Hub cannot be reached (no network, offline mode), or refused a request or a push."""
