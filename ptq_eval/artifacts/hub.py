"""Artifacts on the Hugging Face hub: `org/name[@revision]` (a quantized checkpoint repository: a GPTQ pack, a
compressed-tensors checkpoint) or `org/name/file.gguf[@revision]`, fetched at the commit the revision resolves
to (from the local cache when the hub is offline). Only what the readers need comes down: config, safetensors
and tokenizer files of a repository, never a pickle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ptq_eval.artifacts.base import ArtifactError
from ptq_eval.checkpoints import CheckpointRef, hub_commit

REPOSITORY = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
FETCHED = ["*.json", "*.safetensors", "*.model", "*.txt"]  # a repository's config, weights, tokenizer


@dataclass(frozen=True)
class HubArtifact:
    repo: str
    filename: str | None  # a GGUF file in the repository, or None: the repository is the checkpoint
    revision: str | None


def parse_hub(reference: str) -> HubArtifact | None:
    """The hub artifact a reference names, or None where it cannot name one."""
    name, _, revision = reference.partition("@")
    parts = name.split("/")
    repo = "/".join(parts[:2])
    if len(parts) < 2 or not REPOSITORY.fullmatch(repo):
        return None
    filename = "/".join(parts[2:]) or None
    if filename is not None and not filename.endswith(".gguf"):
        return None
    return HubArtifact(repo, filename, revision or None)


def fetch(found: HubArtifact) -> tuple[Path, str]:
    """The artifact's local path (a file or a snapshot folder) and the commit it was fetched at."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    commit = hub_commit(CheckpointRef(found.repo, found.revision))
    try:
        if found.filename is not None:
            return Path(hf_hub_download(found.repo, found.filename, revision=commit)), commit
        return Path(snapshot_download(found.repo, revision=commit, allow_patterns=FETCHED)), commit
    except (EntryNotFoundError, LocalEntryNotFoundError) as error:
        where = found.filename or "its files"
        raise ArtifactError(f"{found.repo}@{commit}: {where} not found ({type(error).__name__})") from None
