"""Incoherence processing by rotation (QuIP, QuIP#, QuaRot): a seeded orthogonal R applied to a matrix's
input side before rounding and undone after, so the simulated weight is Q(W·Rᵀ)·R and W x = (W·Rᵀ)(R·x).

R for a width n = 2^k · m (m odd) is (Q_m ⊗ H_p)·D: random signs D, a normalized Walsh–Hadamard transform of
order p = 2^k, and a seeded random orthogonal matrix Q_m of the odd rest (m = 1 for powers of two: a randomized
Hadamard transform, as QuIP# uses). It needs no table of Hadamard matrices of other orders and costs
O(n log n + n·m) per row. For formats whose scales are shared by fixed blocks of consecutive columns (MXFP4,
MXINT8, NVFP4) R is block-diagonal, one such rotation per block, so each rotated block still shares its
power-of-two (or e4m3) scale with its own weights (a global rotation mixes every block's outliers into every
scale). Every matrix of one width shares one R (matrices reading the same input keep one rotated input).

Applied in float64 and returned in the caller's dtype.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from ptq_eval.quant.formats import number_format

ROTATIONS = ("none", "hadamard")


class RotationOptions(BaseModel):
    """The rotation options every method shares: `rotation: hadamard` rotates each matrix's inputs before
    rounding (`rotation_seed` picks the signs and the odd-order factor)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rotation: Literal[ROTATIONS] = "none"
    rotation_seed: int = 0

    @model_validator(mode="after")
    def _seed_needs_a_rotation(self) -> RotationOptions:
        if self.rotation == "none" and self.rotation_seed != 0:
            raise ValueError(f"rotation_seed={self.rotation_seed} means nothing without rotation: hadamard")
        return self


ROTATION_OPTIONS = tuple(RotationOptions.model_fields)


def _powers_of_two(width: int) -> int:
    return width & -width


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """The normalized Walsh–Hadamard transform (Sylvester order: symmetric, its own inverse) of x's last axis."""
    p, step = x.shape[-1], 1
    lead = x.shape[:-1]
    while step < p:
        pairs = x.reshape(*lead, p // (2 * step), 2, step)
        first, second = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((first + second, first - second), dim=-2).reshape(*lead, p)
        step *= 2
    return x / math.sqrt(p)


@dataclass(frozen=True)
class _Piece:
    """One block's rotation: signs (n,), the odd factor Q_m (m, m) and the power-of-two order p."""

    signs: torch.Tensor
    odd: torch.Tensor
    order: int

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """R·x for every row x of rows ([..., n])."""
        m = self.odd.shape[0]
        x = (rows * self.signs).reshape(*rows.shape[:-1], m, self.order)
        x = walsh_hadamard(x)
        return (self.odd @ x).reshape(rows.shape) if m > 1 else x.reshape(rows.shape)

    def undo(self, rows: torch.Tensor) -> torch.Tensor:
        """Rᵀ·x for every row x."""
        m = self.odd.shape[0]
        x = rows.reshape(*rows.shape[:-1], m, self.order)
        x = self.odd.T @ x if m > 1 else x
        return walsh_hadamard(x).reshape(rows.shape) * self.signs


def _piece(width: int, seed: int, offset: int) -> _Piece:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + width * 1_009 + offset)
    signs = torch.randint(0, 2, (width,), generator=generator, dtype=torch.float64) * 2 - 1
    order = _powers_of_two(width)
    m = width // order
    odd = torch.ones(1, 1, dtype=torch.float64)
    if m > 1:
        q, r = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
        odd = q * torch.sign(torch.diagonal(r))
    return _Piece(signs, odd, order)


@dataclass(frozen=True)
class Rotation:
    """A seeded orthogonal R of `width` columns, block-diagonal in blocks of `block` columns (None: one block)."""

    width: int
    seed: int
    block: int | None = None

    @functools.cached_property
    def _pieces(self) -> list[tuple[slice, _Piece]]:
        size = self.width if self.block is None else self.block
        spans = [slice(start, min(start + size, self.width)) for start in range(0, self.width, size)]
        return [(span, _piece(span.stop - span.start, self.seed, index)) for index, span in enumerate(spans)]

    def _each(self, rows: torch.Tensor, undo: bool) -> torch.Tensor:
        x = rows.to(torch.float64)
        parts = []
        for span, piece in self._pieces:
            piece = _Piece(*(t.to(x.device) for t in (piece.signs, piece.odd)), piece.order)
            parts.append(piece.undo(x[..., span]) if undo else piece.apply(x[..., span]))
        return torch.cat(parts, dim=-1)

    def rotate(self, rows: torch.Tensor) -> torch.Tensor:
        """rows·Rᵀ (each row x becomes R·x), float64: a weight's rotated form, or its rotated inputs."""
        return self._each(rows, undo=False)

    def restore(self, rows: torch.Tensor) -> torch.Tensor:
        """rows·R, float64: a rotated weight back in the model's basis."""
        return self._each(rows, undo=True)

    def conjugate(self, hessian: torch.Tensor) -> torch.Tensor:
        """R·H·Rᵀ (float64) for a symmetric H: the Hessian of the rotated inputs."""
        return self.rotate(self.rotate(hessian).T)


def rotation_for(config, width: int) -> Rotation | None:
    """The config's rotation of a matrix with `width` input columns (None: the config does not rotate):
    block-diagonal along the format's fixed blocks, global otherwise."""
    if getattr(config, "rotation", "none") == "none":
        return None
    return Rotation(width, config.rotation_seed, number_format(config.format).group)
