"""The error a user can fix: what was wrong, where (file, key path, checkpoint) and what is accepted.

Every error the library raises for bad input derives from `UserError`; the command line prints it in one
line and exits 3, keeping 0/1/2 for results (the gate's pass/fail/undecided). Anything else is a bug in
ptq-eval or below it: exit 4 (`--debug` shows the traceback).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAIL, EXIT_UNDECIDED, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3, 4


class UserError(ValueError):
    """Bad input: a study, policy, file, checkpoint, corpus, store or argument the user can correct."""


class CorpusError(UserError):
    """A corpus or split cannot be read, or holds too little text."""


class StoreError(UserError):
    """A store path that is not a ptq-eval store, or cannot be written."""
