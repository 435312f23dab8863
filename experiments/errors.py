"""The mistakes a user can make, as exceptions that ``run.py`` turns into one sentence and exit status 2.

Everything else that escapes a run is a bug in the suite and keeps its traceback (exit 1).
"""

from __future__ import annotations

from baselines import UnknownMethod
from tera import TensorisationError


class UserError(Exception):
    """A mistake the user can fix; its message is one sentence that says what to do."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A setting that cannot work (wrong type, out of range, unknown choice, impossible combination)."""


class DataUnavailable(UserError, RuntimeError):
    """The data a task needs is not installed, not found, or not in the schema the task expects."""


class ModelUnavailable(UserError, RuntimeError):
    """The weights a model needs are not installed or not found."""


class RunFailed(UserError):
    """A run that started but cannot give a valid result (a non-finite loss or trainable value). Its record says
    ``"status": "failed"`` with the reason, and no table or skip decision counts it."""

    exit_code = 3

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


class IncompatibleChoice(ConfigError):
    """A model that cannot run the chosen task (an encoder on a generation task, or the reverse)."""


# What run.py reports as one sentence with exit 2: ours, plus the method packages' own (tera/ and baselines/ never
# import the harness, so they have their own exception types).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, UnknownMethod, TensorisationError)
