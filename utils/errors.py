"""The one base class of the errors a user can fix: a bad config, flag, annotation, data record, checkpoint or path.

A task script ends such an error with one logged line and exit code 2 (no traceback); anything else is a bug and
keeps its traceback. Each error's message names what to fix: the file and line, the config key, or the flag.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user fixes (the message names the file, line, key or flag); scripts exit with code 2."""


USER_ERROR_EXIT_CODE = 2
