"""Where each checkpoint of a size falls in its run, and the learning rate at every step.

- WSD: linear warmup, constant rate; each target's cooldown (linear to zero) is a branch that ends at its D.
- Cosine: linear warmup, then one cosine decay to `final_lr_fraction`·lr that ends at the largest target;
  the other targets are snapshots of that run mid-decay.
`decay_done` is how far the rate has come down from its peak towards its floor (0 before decay, 1 at the end).
"""

from __future__ import annotations

from dataclasses import dataclass

from ptq_eval.families import decay_done
from ptq_eval.ladder.config import Cosine, LadderConfig


@dataclass(frozen=True)
class Target:
    """One checkpoint to produce: its ratio, final step and the step its WSD cooldown starts (cosine: its end)."""

    tokens_per_param: float
    end_step: int
    cooldown_start: int


def plan_targets(nonembedding_params: int, cfg: LadderConfig) -> list[Target]:
    """Round each target D to whole steps and, for WSD, place its cooldown branch."""
    targets = []
    for ratio in sorted(cfg.tokens_per_param):
        end = max(2, round(ratio * nonembedding_params / cfg.tokens_per_step))
        if isinstance(cfg.schedule, Cosine):
            targets.append(Target(ratio, end, end))
            continue
        cooldown = max(1, round(cfg.schedule.cooldown_fraction * end))
        targets.append(Target(ratio, end, end - cooldown))
    return targets


def warmup_lr(step: int, cfg: LadderConfig) -> float:
    """The rate of the constant phase, ramped up linearly over the warmup."""
    return cfg.lr * min(1.0, (step + 1) / cfg.schedule.warmup_steps)


def cosine_progress(step: int, total_steps: int, cfg: LadderConfig) -> float:
    """Fraction of the cosine decay's length behind `step` (0 during warmup)."""
    warmup = cfg.schedule.warmup_steps
    return min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))


def cosine_decay_done(step: int, total_steps: int, cfg: LadderConfig) -> float:
    """How far the cosine rate has come down from peak to floor after `step` steps (0..1)."""
    return decay_done("cosine", cosine_progress(step, total_steps, cfg))


def cosine_lr(step: int, total_steps: int, cfg: LadderConfig) -> float:
    if step < cfg.schedule.warmup_steps:
        return warmup_lr(step, cfg)
    floor = cfg.schedule.final_lr_fraction
    return cfg.lr * (1 - (1 - floor) * cosine_decay_done(step, total_steps, cfg))
