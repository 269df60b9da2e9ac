"""How far the quantized model's next-token distribution moved from the full-precision one, token by token,
without the full-precision logits at hand (as llama.cpp's `--kl-divergence` reports it):

- `kld`: KL(p_fp ‖ p_q) = Σ_v p_fp(v)·(log p_fp(v) − log p_q(v)), over the full vocabulary, in nats;
- `top1_agree`: 1 where the most likely token is the same (llama.cpp's "same top p");
- `delta_p`: p_q(x) − p_fp(x) of the actual next token x; `rms_delta_p` its root mean square.

Nothing of size tokens × vocabulary is kept. KL(p ‖ q) = Σ p log p − Σ_v p(v)·z_q(v) + logsumexp(z_q), and
with an output head the quantization left alone (the default excludes it) the quantized logits are
z_q(v) = w_v·h_q + b_v (w_v: the head's row of token v, h_q: the quantized model's last hidden state). So the
full-precision pass keeps, per scored token, Σ p log p, the most likely token, p(x), the `TOP` most likely
tokens with their p, and m = Σ_{v not among them} p(v)·w_v (a hidden-size vector; Σ p(v)·b_v likewise); the
quantized pass then reads Σ_v p(v)·z_q(v) as its own logits of those tokens weighted by p, plus h_q·m: a
gather and one dot product per token beyond what its loss costs. Only the tail's small mass goes through h_q·m,
whose rounding differs from the head's float32 logits, so the result agrees with a float64 computation from
the logits themselves. The full-precision pass works in float64 (it runs once per checkpoint); both passes
take the loss and log-sum-exp as max + log Σ exp(z − max) in place on the chunk's logits (blocks summed in
float32, the rest in float64: cheaper than the fused cross-entropy, and without its float32 rounding of ~10
nats): tests/bench/kld.py measures what is left. Where the head was quantized, or the model cannot be split into
body and head, the metrics are not computed and the job says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ptq_eval.evals.paired import UnitMetric

DISTRIBUTION_METRICS = ("kld", "top1_agree", "delta_p", "rms_delta_p")
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)  # llama.cpp prints these (KLD: the top five)
TOP = 32  # full-precision tokens whose p is kept per scored token (the rest enters through m)
REFERENCE_SPLIT = 5  # the full-precision pass's float64 work (~40 bytes a logit) on a fifth of a chunk at a time
FINGERPRINT_ROWS = 64  # head rows compared to tell a changed head
SUM_BLOCK = 1024  # logits summed in float32 at once (a sum over 50k of them errs up to ~1.5e-7; blocks ~3e-8)


def chunk_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position: the loss −log p(target) and the log normaliser logsumexp(logits) in float64 (the max
    exactly, plus the log of Σ exp(logit − max): float32 sums of SUM_BLOCK logits added in float64), and the
    most likely token. Overwrites `logits` (in place, so no second chunk-sized tensor is made)."""
    target_logits = logits.gather(1, targets[:, None])[:, 0].double()
    top, index = logits.max(dim=-1)
    exp = logits.sub_(top[:, None]).exp_()
    sums = torch.stack([exp[:, i : i + SUM_BLOCK].sum(dim=-1) for i in range(0, exp.shape[1], SUM_BLOCK)], dim=-1)
    normaliser = top.double() + sums.double().sum(dim=-1).log()
    return normaliser - target_logits, normaliser, index


def _head_parts(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The head's weight and bias when it is a plain linear map (logits = h·Wᵀ + b), else None."""
    weight = getattr(head, "weight", None)
    if not isinstance(head, torch.nn.Linear) or weight is None:
        return None
    return weight, head.bias


def _fingerprint(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """What tells a changed head from the one a reference was made with, without a copy of it: the sum and the
    norm of its weights (float64), every `rows // 64`-th row and the bias, on the CPU."""
    sums = torch.stack([weight.sum(dtype=torch.float64), torch.linalg.vector_norm(weight, dtype=torch.float64)]).cpu()
    rows = weight[:: max(1, len(weight) // FINGERPRINT_ROWS)].detach().float().cpu()
    return sums, rows, None if bias is None else bias.detach().float().cpu()


def _same(first: tuple, second: tuple) -> bool:
    (sums, rows, bias), (sums_2, rows_2, bias_2) = first, second
    same_bias = (bias is None) == (bias_2 is None) and (bias is None or torch.equal(bias, bias_2))
    return torch.equal(sums, sums_2) and torch.equal(rows, rows_2) and same_bias


@dataclass
class Reference:
    """The full-precision distribution at each scored token, in scoring order (see the module docstring)."""

    neg_entropy: list[torch.Tensor] = field(default_factory=list)
    likely: list[torch.Tensor] = field(default_factory=list)  # the TOP most likely tokens
    likely_p: list[torch.Tensor] = field(default_factory=list)  # their p
    mean_row: list[torch.Tensor] = field(default_factory=list)  # Σ p(v)·w_v over the others (float32)
    mean_bias: list[torch.Tensor] = field(default_factory=list)  # Σ p(v)·b_v over the others
    top: list[torch.Tensor] = field(default_factory=list)
    p_target: list[torch.Tensor] = field(default_factory=list)
    head: tuple | None = None  # the head's fingerprint, to tell a changed one
    why_not: str | None = None  # set when the metrics cannot be computed for this model
    head_float: torch.Tensor | None = None  # the head's weight in float32 while scoring (itself if float32)

    def observe(self, head, hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Keep one chunk's statistics; returns its losses (computed as the quantized pass computes them)."""
        parts = _head_parts(head) if self.why_not is None else None
        if parts is None:
            self.why_not = self.why_not or "the model's output head is not a linear map of its last hidden states"
            return chunk_losses(logits, targets)[0]
        weight, bias = parts
        if self.head is None:
            self.head, self.head_float = _fingerprint(weight, bias), weight.detach().float()
        step = max(1, len(targets) // REFERENCE_SPLIT)  # float64 work on a fifth of the chunk at a time
        with torch.autocast(logits.device.type, enabled=False):
            for start in range(0, len(targets), step):
                self._keep(logits[start : start + step], bias)
            losses, _, top = chunk_losses(logits, targets)
        self.top.append(top.cpu())
        self.p_target.append(torch.exp(-losses).cpu())
        return losses

    def _keep(self, logits: torch.Tensor, bias: torch.Tensor | None) -> None:
        log_p = torch.log_softmax(logits.double(), dim=-1)
        p = log_p.exp()
        self.neg_entropy.append((p * log_p).sum(dim=-1).cpu())
        likely_p, likely = p.topk(min(TOP, p.shape[1]), dim=-1)
        p.scatter_(1, likely, 0.0)  # the tail
        self.likely.append(likely.to(torch.int32).cpu())
        self.likely_p.append(likely_p.cpu())
        self.mean_row.append((p.float() @ self.head_float).cpu())  # the tail: small next to the gathered logits
        self.mean_bias.append((p @ bias.double() if bias is not None else p.new_zeros(len(p))).cpu())

    def finished(self) -> FullPrecision:
        if self.why_not is not None:
            return FullPrecision(why_not=self.why_not)
        return FullPrecision(
            neg_entropy=torch.cat(self.neg_entropy), likely=torch.cat(self.likely), likely_p=torch.cat(self.likely_p),
            mean_row=torch.cat(self.mean_row), mean_bias=torch.cat(self.mean_bias), top=torch.cat(self.top),
            p_target=torch.cat(self.p_target), head=self.head,
        )  # fmt: skip


@dataclass(frozen=True)
class FullPrecision:
    """A finished `Reference`, on the CPU: per scored token Σ p log p, p(x) and Σ p(v)·b_v over the tail (float64),
    the TOP most likely tokens (int32) and their p (float64), the tail's mean head row (float32), the most likely
    token; or why there is none."""

    neg_entropy: torch.Tensor | None = None
    likely: torch.Tensor | None = None
    likely_p: torch.Tensor | None = None
    mean_row: torch.Tensor | None = None
    mean_bias: torch.Tensor | None = None
    top: torch.Tensor | None = None
    p_target: torch.Tensor | None = None
    head: tuple | None = None
    why_not: str | None = None

    @property
    def tokens(self) -> int:
        return 0 if self.top is None else len(self.top)

    def nbytes(self) -> int:
        """What it holds in memory."""
        kept = (self.neg_entropy, self.likely, self.likely_p, self.mean_row, self.mean_bias, self.top, self.p_target)
        return sum(t.numel() * t.element_size() for t in kept if t is not None)


@dataclass
class Comparison:
    """The quantized pass: each chunk's tokens compared with the full-precision reference, in scoring order."""

    reference: FullPrecision
    kld: list[torch.Tensor] = field(default_factory=list)
    agree: list[torch.Tensor] = field(default_factory=list)
    delta_p: list[torch.Tensor] = field(default_factory=list)
    seen: int = 0
    why_not: str | None = None

    def __post_init__(self):
        self.why_not = self.reference.why_not

    def observe(self, head, hidden: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.why_not is None and self.seen == 0:  # the head is checked once per pass
            parts = _head_parts(head)
            if parts is None or not _same(_fingerprint(*parts), self.reference.head):
                self.why_not = "the output head was changed (the metrics need it as in full precision: exclude it)"
        if self.why_not is not None:
            return chunk_losses(logits, targets)[0]
        rows = slice(self.seen, self.seen + len(targets))
        self.seen += len(targets)
        reference, device = self.reference, hidden.device
        with torch.autocast(device.type, enabled=False):
            likely = logits.gather(1, reference.likely[rows].to(device).long()).double()
            losses, normaliser, top = chunk_losses(logits, targets)
            expected_logit = (likely * reference.likely_p[rows].to(device)).sum(dim=-1)
            expected_logit += (hidden.double() * reference.mean_row[rows].to(device).double()).sum(dim=-1)
            expected_logit += reference.mean_bias[rows].to(device)
        self.kld.append((reference.neg_entropy[rows].to(device) - expected_logit + normaliser).cpu())
        self.agree.append((top.cpu() == reference.top[rows]).double())
        self.delta_p.append(torch.exp(-losses).cpu() - reference.p_target[rows])
        return losses

    def per_token(self) -> dict[str, np.ndarray] | None:
        """kld, top1_agree, delta_p per scored token (None when not computed)."""
        if self.why_not is not None:
            return None
        if self.seen != self.reference.tokens:
            raise RuntimeError(f"scored {self.seen} tokens against a reference of {self.reference.tokens}")
        return {
            "kld": torch.cat(self.kld).numpy(),
            "top1_agree": torch.cat(self.agree).numpy(),
            "delta_p": torch.cat(self.delta_p).numpy(),
        }


def percentiles(values: np.ndarray) -> dict[str, float]:
    """The percentiles llama.cpp prints, plus the mean, as `p99.9`, ..., `mean`."""
    found = np.percentile(values, PERCENTILES) if len(values) else [np.nan] * len(PERCENTILES)
    return {f"p{p:g}": float(v) for p, v in zip(PERCENTILES, found, strict=True)} | {"mean": float(values.mean())}


def _per_unit(values: np.ndarray, token_units: np.ndarray, units: int) -> np.ndarray:
    return np.bincount(token_units, weights=values, minlength=units)


def unit_metrics(per_token: dict[str, np.ndarray], token_units: np.ndarray, counts: np.ndarray) -> list[UnitMetric]:
    """The quantized side of the distribution metrics, each a mean over tokens with the eval's units (windows,
    or documents) resampled for its CI; rms_delta_p is √(mean Δp²)."""
    units, tokens = len(counts), int(counts.sum())
    delta_p = per_token["delta_p"]
    return [
        UnitMetric("kld", _per_unit(per_token["kld"], token_units, units), counts, None, tokens),
        UnitMetric("top1_agree", _per_unit(per_token["top1_agree"], token_units, units), counts, None, tokens),
        UnitMetric("delta_p", _per_unit(delta_p, token_units, units), counts, None, tokens),
        UnitMetric("rms_delta_p", _per_unit(delta_p**2, token_units, units), counts, np.sqrt, tokens),
    ]


def reference_metrics(counts: np.ndarray) -> list[UnitMetric]:
    """The full-precision side: the model against itself (KLD 0, every top token the same, Δp 0)."""
    tokens, zeros = int(counts.sum()), np.zeros(len(counts))
    return [
        UnitMetric("kld", zeros, counts, None, tokens),
        UnitMetric("top1_agree", counts.astype(float), counts, None, tokens),
        UnitMetric("delta_p", zeros, counts, None, tokens),
        UnitMetric("rms_delta_p", zeros, counts, np.sqrt, tokens),
    ]


def summary(per_token: dict[str, np.ndarray]) -> dict:
    """What the job's details keep: KLD and Δp percentiles (as llama.cpp prints them) and top-1 agreement."""
    delta_p = per_token["delta_p"]
    return {
        "kld": percentiles(per_token["kld"]),
        "delta_p": percentiles(delta_p) | {"rms": float(np.sqrt(np.mean(delta_p**2)))},
        "top1_agree": float(per_token["top1_agree"].mean()),
    }
