"""Resolve a checkpoint reference to a model, its tokenizer, and its facts (N, D, D/N, weights identity).

A reference is a local directory or `hub-id@revision`. D (tokens seen) comes from, in
order: the study spec, a `ptq_eval.json` next to a local checkpoint, or the family's
ladder family's revision rule (tasks/families/: Pythia `stepK`, OLMo `...-tokensNB`, ...); when
nobody knows it, D is None (δ needs no D; the fits leave such checkpoints out).

The weights' identity pins what was measured: a hub revision resolves to its commit SHA (from
the hub, or offline from the local cache's refs) and is loaded at that commit; a local
directory is identified by the SHA-256 of its config and weight files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ptq_eval import in_memory
from ptq_eval.errors import UserError
from ptq_eval.families import tokens_of
from ptq_eval.quant import embedding_weights

METADATA_FILE = "ptq_eval.json"
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.safetensors.index.json", "*.bin.index.json")
COMMIT = re.compile(r"[0-9a-f]{40}")


class CheckpointError(UserError):
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
    tokens: int | None
    tokens_source: str
    schedule: dict = field(default_factory=dict)
    weights_id: str = ""

    @property
    def tokens_per_param(self) -> float | None:
        """D/N, with N the non-embedding parameters (the weights quantization touches); None if D is unknown."""
        return None if self.tokens is None else self.tokens / self.nonembedding_params


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
    """D and schedule facts of a hub revision from the ladder family that knows it (`families.py`), or None."""
    return None if ref.revision is None else tokens_of(ref.repo, ref.revision)


def read_local_facts(directory: Path) -> dict:
    """The checkpoint's `ptq_eval.json`, or {} when there is none."""
    path = directory / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error


def _checked_tokens(value: object, where: str) -> int:
    """A D read from a file: a positive whole number, or a clear error naming the file."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(
            f"{where}: tokens must be a positive number (tokens seen, D), not {value!r}; leave the key out if D is "
            "unknown"
        )
    return int(value)


def resolve_tokens(ref: CheckpointRef, metadata: dict, tokens: int | None) -> tuple[int | None, str, dict]:
    """D for a checkpoint and where it came from; (None, "unknown", {}) when nobody knows it."""
    schedule = metadata.get("schedule", {})
    if tokens is not None:
        return int(tokens), "spec", schedule
    if "tokens" in metadata:
        return _checked_tokens(metadata["tokens"], str(Path(ref.repo) / METADATA_FILE)), METADATA_FILE, schedule
    known = tokens_from_schedule(ref)
    if known is not None:
        return known
    return None, "unknown", schedule


def _check_safetensors(path: Path) -> None:
    """A safetensors file whose header reads and whose tensors lie inside the file (not truncated)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: damaged safetensors file ({error}); download or save it again") from None


def _weight_files(directory: Path) -> list[Path]:
    return sorted({path for pattern in ("config.json", *WEIGHT_FILES) for path in directory.glob(pattern)})


def weights_stamp(reference: str) -> tuple | None:
    """Name, size and modification time of a local checkpoint's weight files (None for a hub reference, which is
    loaded at a pinned commit): a cheap way to tell that the files changed after they were hashed."""
    ref = CheckpointRef.parse(reference)
    if not ref.is_local:
        return None
    return tuple((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in _weight_files(Path(ref.repo)))


def _local_weights_id(directory: Path) -> str:
    """SHA-256 over config.json and the weight files of a local checkpoint, by name and content."""
    digest = hashlib.sha256()
    for path in _weight_files(directory):
        if path.suffix == ".safetensors":
            _check_safetensors(path)
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _cached_commit(repo: str, revision: str) -> str | None:
    """The commit a revision points to in the local hub cache, if it is there."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    if COMMIT.fullmatch(revision):
        return revision if (folder / "snapshots" / revision).is_dir() else None
    ref = folder / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
        return commit if (folder / "snapshots" / commit).is_dir() else None
    return None


def hub_commit(ref: CheckpointRef) -> str:
    """The commit SHA a hub revision resolves to: from the hub, or offline from the local cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    revision = ref.revision or "main"
    cached = _cached_commit(ref.repo, revision)
    if constants.HF_HUB_OFFLINE:
        if cached is None:
            raise CheckpointError(
                f"{ref}: revision {revision!r} is not in the local hub cache ({constants.HF_HUB_CACHE}) and the hub is "
                "offline (HF_HUB_OFFLINE=1); download it first or run with hub access"
            )
        return cached
    try:
        return HfApi().model_info(ref.repo, revision=revision).sha
    except RevisionNotFoundError:
        raise CheckpointError(f"{ref}: the hub repository has no revision {revision!r}") from None
    except GatedRepoError:
        raise CheckpointError(f"{ref}: the repository is gated; accept its terms and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{ref}: no such hub repository (or it is private)") from None
    except Exception as error:  # network failures arrive as the HTTP client's own types
        if cached is None:
            raise CheckpointError(
                f"{ref}: cannot reach the hub to resolve {revision!r} ({type(error).__name__}: {error})"
            ) from None
        return cached


def weights_identity(reference: str) -> str:
    """`sha256:...` of a local checkpoint's files (or an in-memory model's tensors), or `git:<commit>` of a hub
    revision."""
    if in_memory.is_held(reference):
        return in_memory.held(reference).weights_id
    ref = CheckpointRef.parse(reference)
    return _local_weights_id(Path(ref.repo)) if ref.is_local else f"git:{hub_commit(ref)}"


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


def load_tokenizer(reference: str, trust_remote_code: bool = False, commit: str | None = None):
    """The checkpoint's tokenizer (at `commit` when given, for a hub reference)."""
    from transformers import AutoTokenizer

    if in_memory.is_held(reference):
        return in_memory.held(reference).tokenizer
    ref = CheckpointRef.parse(reference)
    revision = commit or ref.revision
    try:
        return AutoTokenizer.from_pretrained(ref.repo, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load the tokenizer of checkpoint {ref}: {error}") from error


def load_model(
    reference: str,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
    commit: str | None = None,
):
    """Model (in eval mode, on device) and tokenizer (at `commit` when given, for a hub reference); errors say how
    to fix the reference."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if in_memory.is_held(reference):  # copies: the caller's model and tokenizer are never changed
        held = in_memory.held(reference)
        model = copy.deepcopy(held.model).to(device)
        model = model if dtype == "auto" else model.to(getattr(torch, dtype))
        return model.eval(), copy.deepcopy(held.tokenizer)
    ref = CheckpointRef.parse(reference)
    if commit is not None:
        ref = CheckpointRef(ref.repo, commit)
    kwargs = load_kwargs(ref, allow_pickle, trust_remote_code, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref.repo, **kwargs)
        tokenizer = load_tokenizer(str(ref), trust_remote_code)
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError, pickle.UnpicklingError) as error:
        where = (
            "local directory"
            if ref.is_local
            else "Hugging Face hub (is the machine offline? HF_HUB_OFFLINE=1 uses the cache only)"
        )
        pickled_only = ref.is_local and not allow_pickle and not any(Path(ref.repo).glob("*.safetensors"))
        hint = "; weights are loaded from safetensors only unless allow_pickle: true" if pickled_only else ""
        raise CheckpointError(f"cannot load checkpoint {ref} from the {where}: {error}{hint}") from error
    return model.to(device).eval(), tokenizer


def check_vocabulary(model: torch.nn.Module, tokenizer, reference: str) -> None:
    """Every id the tokenizer can emit must have an embedding row (else the first forward fails deep in torch)."""
    try:
        embedding = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # remote-code models may not say
        return
    vocabulary = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if embedding is None or not vocabulary:
        return
    largest = max(vocabulary.values())
    if largest >= embedding.num_embeddings:
        token = max(vocabulary, key=vocabulary.get)
        raise CheckpointError(
            f"{reference}: the tokenizer's largest id is {largest} ({token!r}) but the model's embedding has "
            f"{embedding.num_embeddings} rows (ids 0..{embedding.num_embeddings - 1}); pair the checkpoint with "
            "the tokenizer it was trained with"
        )


def checkpoint_tokens(reference: str, tokens: int | None = None) -> tuple[int | None, str, dict]:
    """D, where it came from, and the schedule facts of a checkpoint (its metadata file read and checked)."""
    if in_memory.is_held(reference):  # D only as the study gives it
        return (None, "unknown", {}) if tokens is None else (int(tokens), "spec", {})
    ref = CheckpointRef.parse(reference)
    metadata = read_local_facts(Path(ref.repo)) if ref.is_local else {}
    return resolve_tokens(ref, metadata, tokens)


def load_checkpoint(
    reference: str,
    tokens: int | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
    weights_id: str | None = None,
) -> LoadedCheckpoint:
    """Load model + tokenizer (a hub revision at the commit `weights_id` names) and work out N and D."""
    ref = CheckpointRef.parse(reference)
    resolved_tokens, source, schedule = checkpoint_tokens(reference, tokens)
    weights_id = weights_id or weights_identity(reference)
    commit = weights_id.removeprefix("git:") if weights_id.startswith("git:") else None
    model, tokenizer = load_model(reference, allow_pickle, trust_remote_code, dtype, device, commit)
    check_vocabulary(model, tokenizer, str(ref))
    params, nonembedding = count_params(model)
    facts = CheckpointFacts(str(ref), params, nonembedding, resolved_tokens, source, schedule, weights_id)
    return LoadedCheckpoint(model, tokenizer, facts)
