"""What every artifact reader shares: the record of what a file says of itself, its errors, and its identity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ptq_eval.errors import UserError
from ptq_eval.quant.precision import Precision


class ArtifactError(UserError):
    """A quantized file that cannot be read, or does not belong to its base; the message says which and why."""


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A quantized file as its metadata describes it (read before any model loads).

    `bits`: the element bits of the type holding most of its matrices; `bits_per_weight`: what its matrices
    (embeddings and output head aside) cost as stored, scales and minimums included, the laws' P; `format`: a
    format ptq-eval simulates where the file is all of one (`q4_0`, `int`), else the layout's name; `types`:
    how many of those matrices each storage type holds; `activations`: how its kernels round the inputs of the
    matrices it quantizes (None: they do not)."""

    reference: str
    path: Path
    artifact_type: str
    quantized_as: str
    architectures: tuple[str, ...]  # the transformers model types its base may have
    bits: int
    group_size: int
    format: str
    symmetric: bool
    bits_per_weight: float
    types: tuple[tuple[str, int], ...]
    commit: str | None = None  # the hub commit it was fetched at (None: a local path)
    activations: Precision | None = None

    def describe(self) -> str:
        mix = ", ".join(f"{kind}×{count}" for kind, count in self.types)
        cost = f"{self.bits_per_weight:.3g} bits/weight"
        inputs = f"; activations {self.activations.label}" if self.activations else ""
        return f"{self.reference} ({self.artifact_type} {self.quantized_as}: {mix}; {cost}{inputs})"


def file_digest(paths: list[Path]) -> str:
    """sha256 over the files, by name and content (a changed file is a new artifact)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def element_bits(type_name: str) -> int:
    """The element bits a storage type's name gives (Q4_K → 4, IQ3_XXS → 3, F16 → 16, int4 → 4)."""
    digits = "".join(c if c.isdigit() else " " for c in type_name).split()
    if not digits:
        raise ArtifactError(f"storage type {type_name!r} names no bit width")
    return int(digits[0])
