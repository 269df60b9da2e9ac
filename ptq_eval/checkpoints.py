"""Resolve a checkpoint reference to a model, its tokenizer, and its facts (N, D, D/N).

A reference is a local directory or `hub-id@revision`. D (tokens seen) comes from, in
order: the study spec, a `ptq_eval.json` next to a local checkpoint, or the family's
known schedule (Pythia `stepK`; OLMo revision names that carry the token count).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ptq_eval.quant import embedding_weights

METADATA_FILE = "ptq_eval.json"
PYTHIA_TOKENS_PER_STEP = 2_097_152
PYTHIA_TOTAL_STEPS = 143_000
_TOKEN_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


class CheckpointError(ValueError):
    """A checkpoint cannot be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class CheckpointRef:
    """A local directory, or a hub repository at an optional revision."""

    repo: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> CheckpointRef:
        if Path(text).is_dir():
            return cls(text)
        repo, _, revision = text.partition("@")
        return cls(repo, revision or None)

    @property
    def is_local(self) -> bool:
        return self.revision is None and Path(self.repo).is_dir()

    def __str__(self) -> str:
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"


@dataclass(frozen=True)
class CheckpointFacts:
    """What the scaling law needs to know about a checkpoint."""

    name: str
    params: int
    nonembedding_params: int
    tokens: int
    tokens_source: str
    schedule: dict = field(default_factory=dict)

    @property
    def tokens_per_param(self) -> float:
        """D/N, with N the non-embedding parameters (the weights quantization touches)."""
        return self.tokens / self.nonembedding_params


@dataclass
class LoadedCheckpoint:
    model: torch.nn.Module
    tokenizer: object
    facts: CheckpointFacts


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameter counts; token and position embeddings and the output head are
    excluded from the second (Kaplan et al.'s N), tied weights counted once."""
    embeddings = embedding_weights(model)
    total = sum(p.numel() for p in model.parameters())
    return total, total - sum(p.numel() for p in model.parameters() if id(p) in embeddings)


def tokens_from_schedule(ref: CheckpointRef) -> tuple[int, str, dict] | None:
    """D and schedule phase from a known family's revision naming, or None."""
    revision = ref.revision or ""
    if "pythia" in ref.repo.lower():
        match = re.fullmatch(r"step(\d+)", revision)
        if match:
            step = int(match.group(1))
            schedule = {"kind": "cosine", "total_steps": PYTHIA_TOTAL_STEPS, "decay_done": step / PYTHIA_TOTAL_STEPS}
            return step * PYTHIA_TOKENS_PER_STEP, "pythia schedule", schedule
    match = re.search(r"tokens(\d+(?:\.\d+)?)([KMBT])", revision)
    if match:
        tokens = int(float(match.group(1)) * _TOKEN_UNITS[match.group(2)])
        stage = re.match(r"(stage\d+)", revision)
        return tokens, "revision name", {"stage": stage.group(1)} if stage else {}
    return None


def read_local_facts(directory: Path) -> dict:
    """The checkpoint's `ptq_eval.json`, or {} when there is none."""
    path = directory / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error


def resolve_tokens(ref: CheckpointRef, metadata: dict, tokens: int | None) -> tuple[int, str, dict]:
    """D for a checkpoint, and where it came from; a clear error when nobody knows it."""
    schedule = metadata.get("schedule", {})
    if tokens is not None:
        return int(tokens), "spec", schedule
    if "tokens" in metadata:
        return int(metadata["tokens"]), METADATA_FILE, schedule
    known = tokens_from_schedule(ref)
    if known is not None:
        return known
    raise CheckpointError(
        f"tokens seen (D) unknown for checkpoint {ref}: give it in the study "
        f"(ladder entry {{path: {ref}, tokens: N}}), or put a {METADATA_FILE} with "
        '{"tokens": N} next to the weights; known schedules: Pythia stepK, OLMo ...-tokensNB revisions'
    )


def load_kwargs(ref: CheckpointRef, allow_pickle: bool, trust_remote_code: bool, dtype: str) -> dict:
    """Arguments passed to `from_pretrained`: safetensors only and no remote code unless asked."""
    kwargs = {
        "use_safetensors": not allow_pickle,
        "trust_remote_code": trust_remote_code,
        "dtype": dtype if dtype == "auto" else getattr(torch, dtype),
    }
    if ref.revision is not None:
        kwargs["revision"] = ref.revision
    return kwargs


def load_model(
    reference: str,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
):
    """Model (in eval mode, on device) and tokenizer; errors say how to fix the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = CheckpointRef.parse(reference)
    kwargs = load_kwargs(ref, allow_pickle, trust_remote_code, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.repo, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(ref.repo, revision=ref.revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        where = (
            "local directory"
            if ref.is_local
            else "Hugging Face hub (is the machine offline? HF_HUB_OFFLINE=1 uses the cache only)"
        )
        hint = "" if allow_pickle else "; weights are loaded from safetensors only unless allow_pickle: true"
        raise CheckpointError(f"cannot load checkpoint {ref} from the {where}: {error}{hint}") from error
    return model.to(device).eval(), tokenizer


def load_checkpoint(
    reference: str,
    tokens: int | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
) -> LoadedCheckpoint:
    """Load model + tokenizer and work out N and D (D first, so a missing D fails before any download)."""
    ref = CheckpointRef.parse(reference)
    metadata = read_local_facts(Path(ref.repo)) if ref.is_local else {}
    resolved_tokens, source, schedule = resolve_tokens(ref, metadata, tokens)
    model, tokenizer = load_model(reference, allow_pickle, trust_remote_code, dtype, device)
    params, nonembedding = count_params(model)
    facts = CheckpointFacts(str(ref), params, nonembedding, resolved_tokens, source, schedule)
    return LoadedCheckpoint(model, tokenizer, facts)
