"""A study expanded into jobs: each (checkpoint, quant config or full precision, eval) with a content key that
stays the same across versions (`tests/test_job_keys.py`, `tests/test_eval_keys.py`)."""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ptq_eval.evals.kinds import EvalKind
from ptq_eval.quant import QuantConfig
from ptq_eval.spec import Calibration, FamilyLadder, LadderEntry, Study, StudyError


@dataclass(frozen=True)
class CheckpointSpec:
    reference: str
    tokens: int | None = None


@dataclass(frozen=True)
class Job:
    """One (checkpoint, quant config or full precision, evaluation) unit of work."""

    checkpoint: CheckpointSpec
    quant: QuantConfig | None
    eval: EvalKind
    dtype: str
    seed: int
    exclude: tuple[str, ...]
    calibration: Calibration | None = None

    def describe(self) -> dict:
        """What the job is, as stored with its results; the key is a hash of this."""
        quant = (
            self.quant.as_dict()
            if self.quant
            else {"method": "none", "bits": None, "group_size": None, "symmetric": None}
        )
        description = {
            "checkpoint": self.checkpoint.reference,
            "tokens_override": self.checkpoint.tokens,
            **quant,
            "eval": self.eval.name,
            "eval_config": self.eval.key_config(),
            "dtype": self.dtype,
            "seed": self.seed,
        }
        if self.quant:
            description["exclude"] = list(self.exclude)
        if self.quant and self.quant.needs_calibration:
            description["calibration"] = self.calibration.model_dump()
        return description

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:24]

    def baseline(self) -> Job:
        """The full-precision job this quantized job is paired with."""
        return Job(self.checkpoint, None, self.eval, self.dtype, self.seed, self.exclude)


def _expand_ladder_entry(entry: str | LadderEntry | FamilyLadder) -> list[CheckpointSpec]:
    if isinstance(entry, FamilyLadder):
        return [CheckpointSpec(reference) for reference in entry.references()]
    reference, tokens = (entry, None) if isinstance(entry, str) else (entry.checkpoint, entry.tokens)
    if any(char in reference for char in "*?["):
        matches = sorted(p for p in glob.glob(reference) if (Path(p) / "config.json").is_file())
        if not matches:
            raise StudyError(f"ladder entry {reference!r} matches no checkpoint directory (none with a config.json)")
        return [CheckpointSpec(match, tokens) for match in matches]
    return [CheckpointSpec(reference, tokens)]


def checkpoints(study: Study) -> list[CheckpointSpec]:
    """The study's checkpoints in order, globs and family shorthands expanded."""
    expanded = [spec for entry in study.ladder for spec in _expand_ladder_entry(entry)]
    return list(dict.fromkeys(expanded))


def expand_jobs(study: Study) -> list[Job]:
    """Every quantized job of the study (each implies its full-precision baseline)."""
    configs = list(dict.fromkeys(config for grid in study.quant for config in grid.configs()))
    return [
        Job(checkpoint, config, evaluation, study.dtype, study.seed, study.exclude, study.calibration)
        for checkpoint in checkpoints(study)
        for config in configs
        for evaluation in study.evals
    ]
