"""The errors that ``train.py`` reports as one clear message instead of a traceback, and the
two checks that most constructor settings go through."""

import signal
from collections.abc import Sequence


class AttentionLabError(Exception):
    """Base class: a problem the user fixes by changing a setting."""

    exit_code = 2  # what ``train.py`` exits with after logging the message


class ConfigError(AttentionLabError, ValueError):
    """A config value that cannot work; the message names the key to change."""


class DataNotFoundError(AttentionLabError, RuntimeError):
    """Data files missing and not downloadable; the message names the folder and the setting."""


class DataFormatError(AttentionLabError, ValueError):
    """Data files that exist but cannot be used (empty, mismatched); the message names them."""


class WeightsMismatchError(AttentionLabError, ValueError):
    """Pretrained tensors that do not fit the model; the message lists every name at fault."""


class NonFiniteLossError(AttentionLabError, ArithmeticError):
    """A loss became NaN or infinite; the message names the metric, epoch and step."""


class TrainingInterrupted(AttentionLabError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved to ``checkpoint``.

    Exits with the shell's convention for a signal, 128 + its number (130, 143), so schedulers
    and scripts can tell an interruption from a failure.
    """

    def __init__(self, signum: int, *, epoch: int, step: int, checkpoint: str) -> None:
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(
            f"Interrupted by {self.signal_name} at epoch {epoch} step {step}; "
            f"checkpoint saved to {checkpoint}"
        )


class RunInUseError(AttentionLabError):
    """Another live process is writing in the run directory; the message names it."""


class DiskFullError(AttentionLabError, OSError):
    """The disk of the run directory filled up; the message names it, the space left, and
    the command that resumes the run once space is freed."""


def check_positive(**values: float | None) -> None:
    """A ``ValueError`` naming the first of ``values`` that is not positive (``train.py`` puts
    the config group before the name: ``model.d_model=0 must be positive``)."""
    for name, value in values.items():
        if value is None or value <= 0:
            raise ValueError(f"{name}={value} must be positive")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """A ``ValueError`` naming ``name`` and the choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not known; choose one of {', '.join(choices)}")
