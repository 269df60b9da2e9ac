r"""Released training ladders as data: which repositories a family has, and how a revision name gives D.

One YAML file per family under `tasks/families/` (and in any folder listed in `PTQ_EVAL_FAMILIES`,
separated by the OS path separator), so a user adds a ladder without code:

```yaml
name: pythia
repos:                                  # size -> its repository (or a list of them)
  70m: EleutherAI/pythia-70m
  160m: EleutherAI/pythia-160m
revisions:                              # the first pattern that matches a revision (fully) decides
  - pattern: 'step(?P<step>\d+)'
    tokens_per_step: 2097152            # D = step × tokens_per_step (a number, or one per size)
    schedule: {kind: cosine, total_steps: 143000}   # decay_done from step / total_steps
    phase: stable                       # the schedule phase of these revisions (optional)
source: where the rule was read, and what could not be verified
```

A rule may instead read D from the name: groups `tokens` and `unit` (K, M, B, T), plus `offset_tokens`
(a number, or one per size) for names whose count restarts (OLMo 2's stage 2). Schedule values may be given
per size too. From the schedule, `decay_done` (how far the learning rate has decayed, 0..1) is worked out for
`total_steps` (a decay over the whole run, progress step / total), `decay_start_step` + `total_steps` (WSD:
the cooldown's progress; phase stable or decay) and `total_tokens` (a decay over a token budget: D / total);
the progress becomes `decay_done` by the schedule's shape (`decay_done` below; none for an unknown kind).
A family with `fallback: true` applies to any repository and is tried after all others.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ptq_eval.errors import UserError
from ptq_eval.yaml_files import read_yaml

UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
FAMILY_DIRS_VARIABLE = "PTQ_EVAL_FAMILIES"


class FamilyError(UserError):
    """A family file is malformed, or a family or size is unknown."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RevisionRule(_Strict):
    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"pattern {pattern!r} is not a regular expression: {error}") from None
        return pattern

    tokens_per_step: float | dict[str, float] | None = Field(default=None)
    offset_tokens: float | dict[str, float] = 0
    schedule: dict = {}
    phase: str | None = None


class Family(_Strict):
    name: str
    repos: dict[str, str | list[str]] = {}
    revisions: list[RevisionRule] = Field(min_length=1)
    source: str = ""
    fallback: bool = False

    def repo_of(self, size: str) -> str:
        """The (first) repository of a size."""
        for name, repos in self.repos.items():
            if name.lower() == size.lower():
                return repos if isinstance(repos, str) else repos[0]
        raise FamilyError(f"family {self.name} has no size {size!r}; known: {', '.join(self.repos)}")

    def size_of(self, repo: str) -> str | None | bool:
        """The size of one of the family's repositories (None under a fallback family), False if not ours."""
        for size, repos in self.repos.items():
            if repo.lower() in [r.lower() for r in ([repos] if isinstance(repos, str) else repos)]:
                return size
        return None if self.fallback else False

    def tokens(self, repo: str, revision: str) -> tuple[int, dict] | None:
        """(D, schedule facts) for a revision of one of the family's repositories, or None."""
        size = self.size_of(repo)
        if size is False:
            return None
        for rule in self.revisions:
            match = re.fullmatch(rule.pattern, revision)
            if match:
                return _apply(rule, match.groupdict(), size, self.name)
        return None


def _per_size(value, size: str | None, family: str, key: str):
    """A value given once, or per size (a mapping from the family's sizes)."""
    if not isinstance(value, dict):
        return value
    for name, number in value.items():
        if size is not None and name.lower() == size.lower():
            return number
    raise FamilyError(f"family {family}: {key} has no value for size {size!r}; known: {', '.join(value)}")


def decay_done(kind: str, progress: float) -> float | None:
    """How far the learning rate has come down from its peak towards its floor (0..1) once `progress` (0..1)
    of the decay's length is behind: the half-cosine for a cosine schedule, the progress itself for a linear
    decay or WSD cooldown; None for a schedule of unknown shape. One definition for hub families and the
    ladder trainer alike, so the fitter's phase term means the same on both."""
    progress = min(1.0, max(0.0, progress))
    if kind == "cosine":
        return 0.5 * (1 - math.cos(math.pi * progress))
    return progress if kind in ("linear", "wsd") else None


def _with_decay(schedule: dict, progress: float) -> dict:
    done = decay_done(str(schedule.get("kind", "")), progress)
    return schedule | ({"decay_done": done} if done is not None else {})


def _schedule(rule: RevisionRule, size: str | None, family: str, step: int | None) -> dict:
    """The rule's schedule facts for this size and step, with the phase and decay_done they imply."""
    schedule = {key: _per_size(value, size, family, key) for key, value in rule.schedule.items()}
    total, start = schedule.get("total_steps"), schedule.get("decay_start_step")
    if step is not None:
        schedule["step"] = step
        if total and start is not None:
            schedule = _with_decay(schedule, (step - start) / (total - start))
            schedule["phase"] = "decay" if step > start else "stable"
        elif total:
            schedule = _with_decay(schedule, step / total)
    if rule.phase:
        schedule["phase"] = rule.phase
    return schedule


def _apply(rule: RevisionRule, groups: dict, size: str | None, family: str) -> tuple[int, dict]:
    step = int(groups["step"]) if groups.get("step") is not None else None
    schedule = _schedule(rule, size, family, step)
    per_step = _per_size(rule.tokens_per_step, size, family, "tokens_per_step")
    if per_step is not None and step is not None:
        tokens = step * per_step
    elif groups.get("tokens") is not None:
        tokens = float(groups["tokens"]) * UNITS[groups.get("unit") or "B"]
    else:
        raise FamilyError(f"family {family}: pattern {rule.pattern!r} gives neither step × tokens_per_step nor tokens")
    tokens += _per_size(rule.offset_tokens, size, family, "offset_tokens") or 0
    if schedule.get("total_tokens"):
        schedule = _with_decay(schedule, tokens / schedule["total_tokens"])
    return int(round(tokens)), schedule


def family_dirs() -> list[Path]:
    """Where family files are read from: PTQ_EVAL_FAMILIES, ./tasks/families, and the project's own."""
    extra = [Path(part) for part in os.environ.get(FAMILY_DIRS_VARIABLE, "").split(os.pathsep) if part]
    own = Path(__file__).resolve().parents[1] / "tasks" / "families"
    return list(dict.fromkeys([*extra, Path("tasks/families").resolve(), own]))


@functools.cache
def _load(directories: tuple[Path, ...]) -> dict[str, Family]:
    families: dict[str, Family] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            try:
                family = Family.model_validate(read_yaml(path, "family", FamilyError))
            except ValidationError as error:
                raise FamilyError(f"{path}: not a valid family file: {error}") from None
            families.setdefault(family.name, family)  # earlier folders override later ones
    return families


def families() -> dict[str, Family]:
    return _load(tuple(family_dirs()))


def get_family(name: str) -> Family:
    known = families()
    if name not in known:
        raise FamilyError(f"unknown ladder family {name!r}; known: {', '.join(sorted(known))}")
    return known[name]


def tokens_of(repo: str, revision: str) -> tuple[int, str, dict] | None:
    """(D, where it came from, schedule facts) for a hub revision, from the first family that knows it."""
    ordered = sorted(families().values(), key=lambda family: family.fallback)
    for family in ordered:
        found = family.tokens(repo, revision)
        if found is not None:
            return found[0], f"family {family.name}", found[1]
    return None


@dataclass(frozen=True)
class Revision:
    name: str
    tokens: int
    schedule: dict


def ladder_revisions(repo: str, revisions: list[str]) -> list[Revision]:
    """The revisions whose D a family knows, sorted by D."""
    known = [(name, tokens_of(repo, name)) for name in revisions]
    return sorted((Revision(name, found[0], found[2]) for name, found in known if found), key=lambda r: r.tokens)


def pick(revisions: list[Revision], low: float, high: float, count: int | None, every: int | None) -> list[Revision]:
    """Revisions with D in [low, high]: `count` of them log-spaced in D (nearest to each target), or every k-th."""
    inside = [r for r in revisions if low <= r.tokens <= high and r.tokens > 0]
    if every is not None:
        return inside[::every]
    if count is None or count >= len(inside):
        return inside
    first, last = math.log(inside[0].tokens), math.log(inside[-1].tokens)
    targets = [first + (last - first) * i / max(1, count - 1) for i in range(count)]
    chosen = {min(inside, key=lambda r, t=target: abs(math.log(r.tokens) - t)).name: None for target in targets}
    return [r for r in inside if r.name in chosen]


def hub_revisions(repo: str) -> list[str]:
    """The branch names of a hub repository: from the hub, or offline from the local cache's refs."""
    from huggingface_hub import constants, list_repo_refs

    if constants.HF_HUB_OFFLINE:
        refs = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs"
        if not refs.is_dir():
            raise FamilyError(f"{repo}: no refs in the local hub cache ({constants.HF_HUB_CACHE}); the hub is offline")
        return sorted(path.name for path in refs.iterdir() if path.is_file())
    try:
        return sorted(branch.name for branch in list_repo_refs(repo).branches)
    except Exception as error:  # a missing repository, a network failure: the user's to fix
        raise FamilyError(f"{repo}: cannot list its revisions on the hub ({type(error).__name__}: {error})") from None


def revision_table(repo: str) -> tuple[pd.DataFrame, int]:
    """A hub ladder's revisions whose D a family knows (revision, tokens, phase, decay_done), and how many
    revisions the repository has in all."""
    names = hub_revisions(repo)
    found = ladder_revisions(repo, names)
    if not found:
        raise FamilyError(f"{repo}: none of its {len(names)} revisions is known to a ladder family (tasks/families/)")
    table = pd.DataFrame(
        {
            "revision": [r.name for r in found],
            "tokens": [r.tokens for r in found],
            "phase": [r.schedule.get("phase", r.schedule.get("kind", "")) for r in found],
            "decay_done": [r.schedule.get("decay_done", "") for r in found],
        }
    )
    return table, len(names)
