"""The two ways a checkpoint can be wrong for the user to fix: the file cannot be read, or it does not fit the model.
Both are ``UserError``s: a task script reports them in one line and exits with code 2 (docs/model.md#loading)."""
from __future__ import annotations

from utils.errors import UserError


class WeightsFileError(UserError, OSError):
    """A weight file that is missing or cannot be read as a state dict (corrupt, truncated, not a checkpoint); the
    message names the file."""


class CheckpointMismatchError(UserError, ValueError):
    """A readable checkpoint that does not fit the model it is loaded into (another task's, another size, another
    layout); the message names the file, the model it was made for and what is missing or of another shape."""
