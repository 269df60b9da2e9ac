"""The command line called in this process, its output captured: the same `main` a user's `ptq-eval` runs,
without the seconds an interpreter spends importing torch and transformers. Tests of what only a real process
shows (kills, concurrent runs, import-time settings) start one instead (kill_resume.cli)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from ptq_eval.cli import main


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, check: bool = True) -> Outcome:
    """`ptq-eval ARGS`; with `check`, a non-zero exit fails the test with what the command wrote to stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    if check and code != 0:
        raise AssertionError(f"ptq-eval {' '.join(args)} exited {code}: {err.getvalue()}")
    return Outcome(code, out.getvalue(), err.getvalue())
