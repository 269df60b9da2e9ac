"""Eval kinds: one module each, registered in `EVAL_KINDS` (`base.py` says what a kind declares)."""

from ptq_eval.evals.kinds.base import EVAL_KINDS, CheckpointView, EvalKind, Evaluator, Scored, Text, register_eval

# the order they register in is the order errors list them
# isort: off
from ptq_eval.evals.kinds.perplexity import PerplexityEval
from ptq_eval.evals.kinds.lm_eval_task import LmEvalEval

# isort: on

__all__ = [
    "EVAL_KINDS", "CheckpointView", "EvalKind", "Evaluator", "LmEvalEval", "PerplexityEval", "Scored", "Text",
    "register_eval",
]  # fmt: skip
