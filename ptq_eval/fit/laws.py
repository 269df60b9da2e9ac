"""The laws: what y (log δ, or log L for `base`) each one predicts from log N, log D and P.

- `kumar`:   δ = C_T · D^γ_D / N^γ_N · exp(−P/γ_post)   (Kumar et al. 2024), jointly over checkpoints and bits;
- `rival`:   δ = k · D^β / (N^α · P^γ)                   (the power law in bits of Ouyang et al. 2024);
- `per_bit`: δ = c_P · D^a_P / N^b_P, an independent fit per bit width P;
- `phase`:   δ = Kumar's law · exp(β·(φ − 1)), φ the fraction of the learning-rate decay done (0..1);
- `phase_only`: δ = C · exp(β·(φ − 1)) / N^γ_N · exp(−P/γ_post): the learning-rate phase in place of D;
- `broken_d`, `broken_dn`: Kumar's law whose exponent of D bends from γ_1 to γ_2 around a break, in D or in
             D/N (a smoothly broken power law; the P term only where the key has several P);
- `base`:    L = E + A/N^α + B/D^β on each checkpoint's full-precision loss (Hoffmann et al. 2022).
N is non-embedding parameters, D training tokens, P bits; δ is the paired loss difference in nats.

Why the phase term is exp(β·(φ − 1)): Catalan-Tatjer et al. (2025) find that PTQ damage grows while the learning
rate decays rather than with tokens as such, so the rival is a multiplicative factor of the decay done. The
exponential keeps δ positive for any β and is linear in log space, so the same censored estimator fits it;
anchoring it at φ = 1 leaves C_T the constant of an annealed model (every WSD checkpoint, the end of a cosine
run), and exp(−β) is how much smaller δ is before any decay. Comparing `phase_only` with `kumar` on held-out
error says whether phase or tokens explains δ better; `phase` says whether phase adds to tokens.

Why a law that bends: probing every checkpoint of a released ladder, the INT4 gap can improve with float32 loss,
plateau, then explode once float32 loss converges ("When Flat Minima Fail", 2026). One power law in D fitted
across such phases misfits them; the broken laws estimate where the slope changes (u_b = log of the break in D
or D/N, with its bootstrap interval) and by how much (γ_2 − γ_1). In log space:
y = c + γ_1·u − γ_N·log N [− P/γ_post] + (γ_2 − γ_1)·s·softplus((u − u_b)/s), u = log D or log(D/N),
s = BEND_WIDTH: the bend spans about a factor e^(2s) in D either side of the break.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

EXPONENTS = (0.25, 0.5, 1.0)
LOG, EXPONENT = (-50.0, 50.0), (-2.0, 4.0)


@dataclass(frozen=True)
class Points:
    """What a fit sees: checkpoint label, log N, log D, bits, the target y (log δ or log L), and the log of
    each point's detection limit (−inf: none). A point with y ≤ limit is censored: its δ is only known to lie
    below the limit, and y holds the limit (see `estimate.py`)."""

    checkpoint: np.ndarray
    log_n: np.ndarray
    log_d: np.ndarray
    bits: np.ndarray
    y: np.ndarray
    limit: np.ndarray
    phase: np.ndarray  # fraction of the learning-rate decay done (NaN: unknown)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def censored(self) -> np.ndarray:
        return self.y <= self.limit

    def take(self, index) -> Points:
        return Points(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def query(params, tokens, bits=0, phase=1.0) -> Points:
    """Points to predict at (the arguments broadcast together; phase 1: an annealed checkpoint)."""
    values = (params, tokens, bits, phase)
    n, d, p, phi = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=float)) for v in values))
    nan = np.full(n.shape, np.nan)
    return Points(np.full(n.shape, ""), np.log(n), np.log(d), p, nan, np.full(n.shape, -np.inf), phi)


@dataclass(frozen=True)
class Law:
    """A model of y: named parameters, bounds, starting grid; `model(theta, points)` -> (y, dy/dtheta), for one
    parameter vector (k,) -> (n,), (n, k) or a stack of them (..., k) -> (..., n), (..., n, k);
    `model(theta, points, jac=False)` -> (y, None)."""

    name: str
    parameters: tuple[str, ...]
    model: Callable[..., tuple[np.ndarray, np.ndarray | None]]
    bounds: tuple[tuple[float, float], ...]
    starts: tuple[tuple[float, ...], ...]
    logged: tuple[int, ...] = (0,)  # fitted as logs, reported as values
    intercepts: tuple[int, ...] = (0,)  # additive in y: re-centred on the data at every start
    needs_bits: bool = True
    needs_phase: bool = False
    per_bits: tuple[float, ...] = ()  # one independent block of parameters per precision P

    def values(self, theta: np.ndarray) -> np.ndarray:
        """Natural parameter values (broadcasts over bootstrap rows)."""
        out = np.array(theta, dtype=float)
        out[..., list(self.logged)] = np.exp(out[..., list(self.logged)])
        return out

    def theta(self, values: dict[str, float]) -> np.ndarray:
        theta = np.array([values[name] for name in self.parameters], dtype=float)
        theta[list(self.logged)] = np.log(theta[list(self.logged)])
        return theta


def _split(theta) -> list[np.ndarray]:
    """A parameter vector (k,) or a stack of them (..., k) as k arrays that broadcast against the points."""
    theta = np.asarray(theta, dtype=float)
    return [theta[..., j, None] for j in range(theta.shape[-1])]


def _columns(*columns) -> np.ndarray:
    """Jacobian columns, each broadcast to (..., n), stacked on a last axis."""
    return np.stack(np.broadcast_arrays(*columns), axis=-1)


def _kumar(theta, x, jac=True):
    log_c, g_d, g_n, g_post = _split(theta)
    value = log_c + g_d * x.log_d - g_n * x.log_n - x.bits / g_post
    return value, (_columns(np.ones_like(value), x.log_d, -x.log_n, x.bits / g_post**2) if jac else None)


def _rival(theta, x, jac=True):
    log_k, alpha, beta, gamma = _split(theta)
    log_p = np.log(x.bits)
    value = log_k - alpha * x.log_n + beta * x.log_d - gamma * log_p
    return value, (_columns(np.ones_like(value), -x.log_n, x.log_d, -log_p) if jac else None)


def _phase(theta, x, jac=True):
    theta = np.asarray(theta, dtype=float)
    value, kumar = _kumar(theta[..., :4], x, jac)
    value = value + theta[..., 4, None] * (x.phase - 1)
    if not jac:
        return value, None
    return value, np.concatenate([kumar, np.broadcast_to(x.phase - 1, value.shape)[..., None]], axis=-1)


def _phase_only(theta, x, jac=True):
    log_c, g_n, g_post, beta = _split(theta)
    value = log_c - g_n * x.log_n - x.bits / g_post + beta * (x.phase - 1)
    return value, (_columns(np.ones_like(value), -x.log_n, x.bits / g_post**2, x.phase - 1) if jac else None)


def _base(theta, x, jac=True):
    log_e, log_a, log_b, alpha, beta = _split(theta)
    terms = _columns(log_e, log_a - alpha * x.log_n, log_b - beta * x.log_d)
    top = terms.max(axis=-1, keepdims=True)
    w = np.exp(terms - top)  # logsumexp by hand: scipy's is slow on small arrays
    value = top[..., 0] + np.log(w.sum(axis=-1))
    if not jac:
        return value, None
    w /= w.sum(axis=-1, keepdims=True)
    return value, np.concatenate([w, (-w[..., 1] * x.log_n)[..., None], (-w[..., 2] * x.log_d)[..., None]], axis=-1)


KUMAR = Law(
    "kumar", ("C_T", "gamma_D", "gamma_N", "gamma_post"), _kumar, (LOG, EXPONENT, EXPONENT, (0.05, 50.0)),
    tuple(itertools.product([0.0], EXPONENTS, EXPONENTS, (0.5, 1.5, 4.0))),
)  # fmt: skip
RIVAL = Law(
    "rival", ("k", "alpha", "beta", "gamma"), _rival, (LOG, EXPONENT, EXPONENT, (-5.0, 30.0)),
    tuple(itertools.product([0.0], EXPONENTS, EXPONENTS, (1.0, 3.0, 8.0))),
)  # fmt: skip
BASE = Law(
    "base", ("E", "A", "B", "alpha", "beta"), _base, (LOG, LOG, LOG, (0.0, 3.0), (0.0, 3.0)),
    tuple(itertools.product((-1.0, 0.0, 1.0), (0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (0.2, 0.5, 1.0), (0.2, 0.5, 1.0))),
    logged=(0, 1, 2), intercepts=(), needs_bits=False,
)  # fmt: skip
PHASE = Law(
    "phase", (*KUMAR.parameters, "beta"), _phase, (*KUMAR.bounds, (-10.0, 10.0)),
    tuple(itertools.product([0.0], EXPONENTS, EXPONENTS, (0.5, 1.5, 4.0), (0.0, 1.0))), needs_phase=True,
)  # fmt: skip
PHASE_ONLY = Law(
    "phase_only", ("C", "gamma_N", "gamma_post", "beta"), _phase_only, (LOG, EXPONENT, (0.05, 50.0), (-10.0, 10.0)),
    tuple(itertools.product([0.0], EXPONENTS, (0.5, 1.5, 4.0), (0.0, 1.0, 3.0))), needs_phase=True,
)  # fmt: skip
# The δ laws by name, in the order fits and reports list them: those with one form, and those the data shape
# (per_bit_law: the widths that can be fitted alone; broken_law: the range of the break). Studies, the command
# line and gate policies accept every name here.
FIXED_LAWS = {law.name: law for law in (KUMAR, RIVAL, PHASE, PHASE_ONLY)}
BROKEN_LAWS = ("broken_d", "broken_dn")
DELTA_LAWS = ("kumar", "rival", "per_bit", "phase", "phase_only", *BROKEN_LAWS)
BEND_WIDTH = 0.3  # s, in log units: the slope is 12%/88% of the way from γ_1 to γ_2 a factor e^(2s) ≈ 1.8 either side
PHASE_LAWS = ("phase", "phase_only")


@dataclass(frozen=True)
class _PerBit:
    """The per-bit model: one (log c, a, b) block per precision (a class, not a closure, so a law pickles)."""

    bits: tuple[float, ...]

    def __call__(self, theta, x, jac=True):
        theta = np.asarray(theta, dtype=float)
        value = np.full((*theta.shape[:-1], len(x)), np.nan)
        columns = np.zeros((*value.shape, 3 * len(self.bits))) if jac else None
        for i, p in enumerate(self.bits):
            rows = x.bits == p
            log_c, a, b = _split(theta[..., 3 * i : 3 * i + 3])
            value[..., rows] = log_c + a * x.log_d[rows] - b * x.log_n[rows]
            if jac:
                ones = np.ones(value[..., rows].shape)
                columns[..., rows, 3 * i : 3 * i + 3] = _columns(ones, x.log_d[rows], -x.log_n[rows])
        return value, columns


def per_bit_law(bits: Sequence[float]) -> Law:
    """δ = c_P · D^a_P / N^b_P for each of these precisions P (bits per weight; NaN at any other)."""
    bits = tuple(sorted(float(b) for b in bits))
    names = tuple(f"{name}_P{p:g}" for p in bits for name in ("c", "a", "b"))
    starts = tuple((0.0, a, b) * len(bits) for a, b in itertools.product(EXPONENTS, EXPONENTS))
    blocks = tuple(range(0, 3 * len(bits), 3))
    bounds = (LOG, EXPONENT, EXPONENT) * len(bits)
    return Law("per_bit", names, _PerBit(bits), bounds, starts, blocks, blocks, needs_bits=False, per_bits=bits)


@dataclass(frozen=True)
class _Broken:
    """The broken model, in D/N (`per_params`) or D, with the P term or without."""

    per_params: bool
    with_bits: bool

    def __call__(self, theta, x, jac=True):
        c, g1, g2, g_n, u_b, *post = _split(theta)
        u = x.log_d - x.log_n if self.per_params else x.log_d
        z = (u - u_b) / BEND_WIDTH
        bend = BEND_WIDTH * np.logaddexp(0.0, z)
        value = c + g1 * u - g_n * x.log_n + (g2 - g1) * bend
        if self.with_bits:
            value = value - x.bits / post[0]
        if not jac:
            return value, None
        slope = 0.5 * (1.0 + np.tanh(z / 2))  # the logistic function, stable for any z
        columns = [np.ones_like(value), u - bend, bend, -x.log_n, -(g2 - g1) * slope]
        return value, _columns(*columns, *([x.bits / post[0] ** 2] if self.with_bits else []))


def broken_law(name: str, with_bits: bool, break_range: tuple[float, float]) -> Law:
    """A smoothly broken power law in D (`broken_d`) or D/N (`broken_dn`), its break u_b (log units) bounded to
    `break_range` (inside the data, so both slopes are seen); the P term only `with_bits` (several P)."""
    per_params = name == "broken_dn"
    where = "D_over_N" if per_params else "D"
    names = ("C", "gamma_1", "gamma_2", "gamma_N", f"break_{where}") + (("gamma_post",) if with_bits else ())
    bounds = (LOG, EXPONENT, EXPONENT, EXPONENT, break_range) + (((0.05, 50.0),) if with_bits else ())
    low, high = break_range
    breaks = tuple(low + (high - low) * q for q in (0.25, 0.5, 0.75))
    posts = (0.5, 1.5, 4.0) if with_bits else ((),)
    starts = tuple(
        (0.0, g1, g2, g_n, u_b, *post)
        for g1, g2, g_n, u_b, post in itertools.product(
            (0.25, 1.0), (0.25, 1.0, 2.5), EXPONENTS, breaks, [(p,) for p in posts] if with_bits else [()]
        )
    )
    return Law(name, names, _Broken(per_params, with_bits), bounds, starts, logged=(0, 4), needs_bits=with_bits)
