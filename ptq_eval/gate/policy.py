"""Release policies: a study without a ladder (the checkpoint to gate comes from the command line) whose
`quant` entries are the release configs and `evals` what they are scored on, plus `budgets`, an `uncertainty`
rule and a `min_coverage`. What a budget's `max` bounds, by `kind`, is in `checks.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ptq_eval.documents import validate_document
from ptq_eval.evals.metrics import facts_of
from ptq_eval.fit.laws import DELTA_LAWS
from ptq_eval.quant import METHOD_OPTIONS, QuantConfig
from ptq_eval.schema import Strict
from ptq_eval.spec import BRANCHES, ArtifactEntry, LadderItem, QuantItem, Study, StudyError
from ptq_eval.yaml_files import read_yaml

UNCERTAINTY = {
    "ci": "pass if the 95% CI lies within the budget, fail if it lies beyond it, undecided if it straddles it",
    "strict": "pass only if the 95% CI lies within the budget, otherwise fail",
    "point": "compare the point estimate with the budget, ignoring the CI",
}
KIND_FIELDS = {
    "baseline": ("checkpoint",),
    "forecast": ("tokens_per_param", "params", "fit", "store", "law", "resamples"),
}
REQUIRED_FIELDS = {"baseline": ("checkpoint",), "forecast": ("tokens_per_param", "fit")}


class PolicyError(StudyError):
    """The policy file is missing, not YAML, or not a valid policy."""


class Budget(Strict):
    """One limit on degradation; what `max` bounds depends on `kind` (see the module docstring)."""

    kind: Literal["absolute", "relative", "baseline", "forecast"]
    max: float = Field(ge=0)
    metric: str = "loss"
    eval: str | None = None  # the name of one eval of the policy (default: every eval)
    higher_is_better: bool | None = None  # required for metrics evals/metrics.py does not know
    checkpoint: str | None = None  # baseline: the checkpoint to compare with
    tokens_per_param: float | None = Field(default=None, gt=0)  # forecast: the planned D/N
    params: float | None = Field(default=None, gt=0)  # forecast: N (default: the gated checkpoint's)
    fit: str | None = None  # forecast: a study YAML (its stored results) or a results CSV
    store: str | None = None  # forecast: the fit study's store (default: the policy's)
    law: str = "kumar"  # forecast: one of fit.laws.DELTA_LAWS
    resamples: int = Field(default=100, gt=0)  # forecast: bootstrap resamples over checkpoints

    @field_validator("law")
    @classmethod
    def _known_law(cls, law: str) -> str:
        if law not in DELTA_LAWS:
            raise ValueError(f"{law!r} is not a law; accepted: {', '.join(DELTA_LAWS)}")
        return law

    @model_validator(mode="after")
    def _fields_match_kind(self):
        for kind, names in KIND_FIELDS.items():
            for name in names:
                if self.kind != kind and name in self.model_fields_set:
                    raise ValueError(f"{name} applies to kind {kind} only, not {self.kind}")
        missing = [name for name in REQUIRED_FIELDS.get(self.kind, ()) if getattr(self, name) is None]
        if missing:
            raise ValueError(f"kind {self.kind} needs {' and '.join(missing)}")
        if self.kind == "forecast" and self.metric != "loss":
            raise ValueError(f"a forecast bounds the fitted loss δ, so metric must be loss, not {self.metric!r}")
        if self.higher_is_better is None and facts_of(self.metric) is None:
            raise ValueError(f"metric {self.metric!r} needs higher_is_better: true or false")
        facts = facts_of(self.metric)
        if self.kind == "relative" and facts is not None and not facts.full_precision:
            raise ValueError(
                f"metric {self.metric!r} is 0 in full precision, so a relative budget has nothing to divide by; "
                "use kind: absolute"
            )
        return self

    @property
    def higher_better(self) -> bool:
        """Whether higher values of the metric are better: as the budget says, else as evals/metrics.py knows."""
        return self.higher_is_better if self.higher_is_better is not None else facts_of(self.metric).higher_is_better


class Policy(Study):
    """A study without a ladder (its `quant` entries are the release configs), plus budgets."""

    ladder: list[LadderItem] = []
    budgets: list[Budget] = Field(min_length=1)
    uncertainty: Literal["ci", "strict", "point"] = "ci"
    store: str | None = None  # where results are read and written (default: runs/<name>.sqlite)
    min_coverage: float | None = Field(default=None, gt=0, le=1)  # default: every weight not excluded

    @field_validator("ladder")
    @classmethod
    def _no_ladder(cls, ladder):
        if ladder:
            raise ValueError("a policy has no ladder: the checkpoint to gate is given on the command line")
        return ladder

    @field_validator("budgets")
    @classmethod
    def _budgets_name_known_evals(cls, budgets, info: ValidationInfo):
        evals = info.data.get("evals", [])
        names = list(dict.fromkeys([e.name for e in evals] + [e.short_name for e in evals]))  # a name or a label
        for index, budget in enumerate(budgets):
            if names and budget.eval is not None and budget.eval not in names:
                raise ValueError(f"eval {budget.eval!r} (budgets[{index}]) is not an eval of the policy; "
                                 f"accepted: {', '.join(names)}")  # fmt: skip
        return budgets

    @field_validator("quant")
    @classmethod
    def _release_configs_distinct(cls, grids):
        configs = release_configs(grids)
        if len({_config_key(config) for config in configs}) < len(configs):
            raise ValueError(
                f"two configs differ only in their method's options ({', '.join(METHOD_OPTIONS)}), so their results "
                "cannot be told apart; keep one"
            )
        return grids


def parse_policy(data: object, source: str = "<policy>") -> Policy:
    return validate_document(Policy, data, source, PolicyError, BRANCHES)


def load_policy(path: str | Path) -> Policy:
    return parse_policy(read_yaml(Path(path), "policy", PolicyError), str(path))


def reference(checkpoint: str) -> str:
    """A checkpoint spelled as studies spell it (no `./`, no trailing slash), so its stored results are found."""
    return os.path.normpath(checkpoint)


def release_configs(grids: list[QuantItem]) -> list[QuantConfig]:
    """The distinct quant configs of these entries (grids, or the files of artifact entries), in order."""
    return list(dict.fromkeys(config for grid in grids for config in grid.configs()))


def _config_key(config: QuantConfig) -> tuple:
    weights = config.method, config.format, config.bits, config.group_size, config.symmetric
    return *weights, config.activations, config.kv_cache


def artifact_policy(policy: Policy, artifact: str) -> Policy:
    """The policy judging one quantized file of the gated checkpoint instead of its release configs; a baseline
    budget (the same config on another checkpoint) has nothing to compare a file with and is refused."""
    for index, budget in enumerate(policy.budgets):
        if budget.kind == "baseline":
            raise PolicyError(
                f"budgets[{index}] (kind baseline) compares a config on two checkpoints; the artifact {artifact} "
                "belongs to one base: gate it without this budget"
            )
    entry = validate_document(ArtifactEntry, {"artifact": artifact}, "--artifact", PolicyError, BRANCHES)
    return policy.model_copy(update={"quant": [entry]})


def gate_study(policy: Policy, checkpoint: str) -> Study:
    """The study the gate needs: the checkpoint and every baseline checkpoint × release configs × evals."""
    baselines = [budget.checkpoint for budget in policy.budgets if budget.kind == "baseline"]
    ladder = list(dict.fromkeys(reference(c) for c in [checkpoint, *baselines]))
    settings = {name: getattr(policy, name) for name in Study.model_fields if name != "ladder"}
    return Study(**settings, ladder=ladder)
