"""Errors a user can fix (a config key, a data file, a missing upstream stage), told apart from bugs.

The command line prints a `UserError`'s message and exits non-zero without a traceback (`--debug`
shows it); anything else is a bug and keeps its traceback. Each subclass also derives from the
built-in type callers would expect (ValueError, FileNotFoundError).
"""

from __future__ import annotations


class UserError(Exception):
    """Something in the user's configuration, data or workflow is wrong; the message says what."""
