"""A study expanded into jobs: each (checkpoint, quant config or full precision, eval) with a content key that
stays the same across versions (`tests/test_job_keys.py`, `tests/test_eval_keys.py`)."""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ptq_eval.artifacts import Artifact
from ptq_eval.evals.kinds import EvalKind
from ptq_eval.quant import QuantConfig
from ptq_eval.spec import ArtifactEntry, Calibration, FamilyLadder, LadderEntry, Study, StudyError, artifact_config


@dataclass(frozen=True)
class CheckpointSpec:
    reference: str
    tokens: int | None = None


@dataclass(frozen=True)
class Job:
    """One (checkpoint, quant config or full precision, evaluation) unit of work; `artifact`: the quantized
    file whose weights the config stands for (method artifact)."""

    checkpoint: CheckpointSpec
    quant: QuantConfig | None
    eval: EvalKind
    dtype: str
    seed: int
    exclude: tuple[str, ...]
    calibration: Calibration | None = None
    artifact: Artifact | None = None

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
        if self.artifact is not None:  # its path in the key; what its files hold is an input (identity.py)
            description |= {"artifact": self.artifact.reference, "bits_per_weight": self.artifact.bits_per_weight}
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


def _points(
    study: Study, ladder: list[CheckpointSpec]
) -> dict[CheckpointSpec, list[tuple[QuantConfig, Artifact | None]]]:
    """Each checkpoint's (config, file) points in the order the study's quant entries give them: a grid's configs
    (each once across grids), an artifact entry's file for its base."""
    by_reference = {checkpoint.reference: checkpoint for checkpoint in ladder}
    points: dict[CheckpointSpec, list] = {checkpoint: [] for checkpoint in ladder}
    seen: set[QuantConfig] = set()
    for entry in study.quant:
        if isinstance(entry, ArtifactEntry):
            try:
                pairs = entry.pairs(list(by_reference))
            except ValueError as error:
                raise StudyError(f"quant: {error}") from None
            for base, artifact in pairs:
                points[by_reference[base]].append((artifact_config(artifact), artifact))
            continue
        fresh = [config for config in dict.fromkeys(entry.configs()) if config not in seen]
        seen.update(fresh)
        for checkpoint in ladder:
            points[checkpoint] += [(config, None) for config in fresh]
    return points


def expand_jobs(study: Study) -> list[Job]:
    """Every quantized job of the study (each implies its full-precision baseline): each config of the grids on
    every checkpoint, each artifact on its base, per checkpoint in the order of the quant entries."""
    ladder = checkpoints(study)
    jobs = []
    for checkpoint, points in _points(study, ladder).items():
        for config, artifact in points:
            jobs += [Job(checkpoint, config, evaluation, study.dtype, study.seed, study.exclude, study.calibration,
                         artifact) for evaluation in study.evals]  # fmt: skip
    return jobs
