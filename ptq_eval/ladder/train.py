"""Training a ladder: one BPE tokenizer and training stream shared by every size, one seeded run per size,
a `save_pretrained` directory per target D with its tokenizer and a `ptq_eval.json` of facts (N, D, the
schedule and how far its decay had come, the ladder config it came from), and `ladder.json` over all."""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from ptq_eval.checkpoints import METADATA_FILE, count_params
from ptq_eval.corpus import load_corpus, token_stream
from ptq_eval.errors import UserError
from ptq_eval.ladder.architectures import build_model
from ptq_eval.ladder.config import Cosine, LadderConfig, ModelSize
from ptq_eval.ladder.schedules import Target, cosine_decay_done, cosine_lr, plan_targets, warmup_lr
from ptq_eval.tokenizer import load_tokenizer, train_bpe
from ptq_eval.version import __version__

LADDER_FILE = "ladder.json"
Progress = Callable[[str], None]


class WindowSampler:
    """Batch `step` of a seeded sequence of shuffled, non-overlapping training windows."""

    def __init__(self, stream: torch.Tensor, cfg: LadderConfig):
        self.window = cfg.seq_len + 1
        self.n_windows = len(stream) // self.window
        if self.n_windows < cfg.batch_size:
            raise UserError(f"training stream of {len(stream)} tokens is too short for one batch")
        self.windows = stream[: self.n_windows * self.window].view(self.n_windows, self.window).long()
        self.batch_size = cfg.batch_size
        self.seed = cfg.seed
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = torch.randperm(self.n_windows, generator=generator)
        return self._orders[epoch]

    def batch(self, step: int) -> torch.Tensor:
        flat = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        rows = [self._order(int(i) // self.n_windows)[int(i) % self.n_windows] for i in flat]
        return self.windows[torch.stack(rows)]

    def epochs(self, steps: int) -> float:
        return steps * self.batch_size / self.n_windows


def _train_step(model, optimizer, batch: torch.Tensor, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    parameter = next(model.parameters())
    batch = batch.to(parameter.device)
    autocast = model.config.ladder_precision == "bfloat16"
    with torch.autocast(parameter.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _wsd_schedule(target: Target, cfg: LadderConfig, done: float) -> dict:
    return {
        "kind": "wsd",
        "description": "linear warmup, constant LR, linear cooldown to 0 branched off at each target D",
        "warmup_steps": cfg.schedule.warmup_steps,
        "cooldown_start_step": target.cooldown_start,
        "cooldown_fraction": cfg.schedule.cooldown_fraction,
        "decay_done": done,
        "phase": "annealed" if done == 1.0 else "mid-decay",
    }


def _snapshot_steps(target: Target, cfg: LadderConfig) -> dict[int, float]:
    """Step -> requested fraction of each mid-decay snapshot of this cooldown; refused where the cooldown is too
    short to hold them apart (two on one step, or one on its first or last step)."""
    length = target.end_step - target.cooldown_start
    steps = {target.cooldown_start + round(f * length): f for f in cfg.schedule.decay_snapshots}
    inside = all(target.cooldown_start < step < target.end_step for step in steps)
    if len(steps) < len(cfg.schedule.decay_snapshots) or not inside:
        raise UserError(
            f"decay_snapshots {cfg.schedule.decay_snapshots} do not fit a cooldown of {length} steps (D/N "
            f"{target.tokens_per_param:g}): each needs a step of its own inside it; use fewer or a longer cooldown"
        )
    return steps


def _wsd_run(model, optimizer, sampler: WindowSampler, targets: list[Target], cfg: LadderConfig, save) -> None:
    """The constant-rate run, with each target's cooldown branched off, trained and saved, then rolled back."""
    step = 0
    for target in targets:
        while step < target.cooldown_start:
            _train_step(model, optimizer, sampler.batch(step), warmup_lr(step, cfg))
            step += 1
        main_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
        start_lr, length = warmup_lr(target.cooldown_start, cfg), target.end_step - target.cooldown_start
        snapshots = _snapshot_steps(target, cfg)
        losses = []
        for s in range(target.cooldown_start, target.end_step):
            losses.append(_train_step(model, optimizer, sampler.batch(s), start_lr * (target.end_step - s) / length))
            if s + 1 in snapshots:  # a mid-decay copy of this branch, at the fraction of the decay it reached
                tail = losses[-max(1, len(losses) // 4) :]
                mid = Target(target.tokens_per_param, s + 1, target.cooldown_start)
                done = (s + 1 - target.cooldown_start) / length
                save(mid, sum(tail) / len(tail), _wsd_schedule(target, cfg, done), f"decay{snapshots[s + 1]:g}-")
        tail = losses[-max(1, len(losses) // 4) :]
        save(target, sum(tail) / len(tail), _wsd_schedule(target, cfg, 1.0))
        model.load_state_dict(main_state[0])
        optimizer.load_state_dict(main_state[1])


def _cosine_run(model, optimizer, sampler: WindowSampler, targets: list[Target], cfg: LadderConfig, save) -> None:
    """One run decaying to its floor at the largest target; every target is saved as the run passes it."""
    total = targets[-1].end_step
    losses: list[float] = []
    for target in targets:
        while len(losses) < target.end_step:
            step = len(losses)
            losses.append(_train_step(model, optimizer, sampler.batch(step), cosine_lr(step, total, cfg)))
        tail = losses[-max(1, round(0.05 * target.end_step)) :]
        done = cosine_decay_done(target.end_step, total, cfg)
        schedule = {
            "kind": "cosine",
            "description": "linear warmup, one cosine decay to final_lr_fraction over the largest target D; "
            "smaller targets saved mid-run",
            "warmup_steps": cfg.schedule.warmup_steps,
            "total_steps": total,
            "final_lr_fraction": cfg.schedule.final_lr_fraction,
            "lr_fraction_at_end": cosine_lr(target.end_step, total, cfg) / cfg.lr,
            "decay_done": done,
            "phase": "annealed" if target.end_step == total else "mid-decay",
        }
        save(target, sum(tail) / len(tail), schedule)


def train_size(size: ModelSize, cfg: LadderConfig, tokenizer, sampler: WindowSampler, out_dir: Path,
               corpus_facts: dict, progress: Progress = lambda message: None,
               device: str = "cpu") -> list[Path]:  # fmt: skip
    """Train one size on `device` and save a checkpoint at each target ratio; return their directories."""
    torch.manual_seed(cfg.seed)
    model = build_model(size, cfg, tokenizer.eos_token_id)
    model.config.ladder_precision = cfg.precision  # read by each step (not saved: removed before saving)
    model.to(device)
    model.train()
    params, nonembedding = count_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    saved: list[Path] = []
    started = time.perf_counter()

    def save(target: Target, final_loss: float, schedule: dict, prefix: str = "") -> None:
        tokens = target.end_step * cfg.tokens_per_step
        directory = out_dir / size.name / f"{prefix}tpp{target.tokens_per_param:g}"
        precision = model.config.ladder_precision
        del model.config.ladder_precision
        model.save_pretrained(directory)
        model.config.ladder_precision = precision
        tokenizer.save_pretrained(directory)
        facts = {
            "params": params,
            "nonembedding_params": nonembedding,
            "tokens": tokens,
            "tokens_per_param": tokens / nonembedding,
            "target_tokens_per_param": target.tokens_per_param,
            "step": target.end_step,
            "seed": cfg.seed,
            "size": size.name,
            "architecture": cfg.architecture,
            "schedule": schedule,
            "train_loss_end": final_loss,
            "epochs": sampler.epochs(target.end_step),
            "train_corpus": corpus_facts,
            "ladder_config": cfg.model_dump(mode="json"),
            "trained_with": {
                "ptq_eval": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "device": str(next(model.parameters()).device),
            },  # fmt: skip
        }
        (directory / METADATA_FILE).write_text(json.dumps(facts, indent=2) + "\n")
        saved.append(directory)
        progress(
            f"{size.name} D/N={facts['tokens_per_param']:.1f} step={target.end_step} decay_done="
            f"{schedule['decay_done']:.2f} loss={final_loss:.3f} ({time.perf_counter() - started:.0f}s)"
        )

    run = _cosine_run if isinstance(cfg.schedule, Cosine) else _wsd_run
    run(model, optimizer, sampler, plan_targets(nonembedding, cfg), cfg, save)
    return saved


def _existing_summary(out_dir: Path, cfg: LadderConfig) -> dict:
    """`ladder.json` already in `out_dir` (empty when none); refused when it records another config."""
    path = out_dir / LADDER_FILE
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    if summary.get("config") != cfg.model_dump(mode="json"):
        raise UserError(
            f"{path} records a ladder trained with another config; train this one into a new --out directory"
        )
    return summary


def train_ladder(cfg: LadderConfig, out_dir: Path, sizes: list[str] | None = None,
                 progress: Progress = lambda message: None, device: str = "cpu") -> list[Path]:  # fmt: skip
    """Train the tokenizer, then every (selected) size; record them in `ladder.json` beside any sizes trained
    into `out_dir` before with the same config; return the new checkpoint directories."""
    known = [size.name for size in cfg.sizes]
    unknown = sorted(set(sizes or []) - set(known))
    if unknown:
        raise UserError(f"unknown size(s) {', '.join(unknown)}; this ladder has {', '.join(known)}")
    if cfg.tokenizer:  # before comparing with a ladder already trained here: it records the tokenizer's size
        tokenizer = load_tokenizer(cfg.tokenizer)
        cfg = cfg.model_copy(update={"vocab_size": len(tokenizer)})
    summary = _existing_summary(out_dir, cfg)
    started = time.perf_counter()
    train = load_corpus(cfg.corpus, "train")
    if cfg.max_train_files is not None:
        train = train.subset(list(range(min(len(train), cfg.max_train_files))))
    if not cfg.tokenizer:
        tokenizer = train_bpe(train.texts(), cfg.vocab_size)
    parts = [train] + [load_corpus(name, "train") for name in cfg.extra_train_corpora]
    stream = torch.cat([token_stream(tokenizer, part) for part in parts])
    corpus_facts = {
        "tokenizer_trained_on": f"loaded from {cfg.tokenizer}" if cfg.tokenizer else train.describe(),
        "parts": [part.describe() for part in parts],
        "tokens": len(stream),
    }
    progress(f"training stream: {len(stream):,} tokens from {sum(len(p) for p in parts)} files")
    sampler = WindowSampler(stream, cfg)
    chosen = [size for size in cfg.sizes if sizes is None or size.name in sizes]
    saved = []
    for size in chosen:
        saved += train_size(size, cfg, tokenizer, sampler, out_dir, corpus_facts, progress, device)
    run = {
        "sizes": [size.name for size in chosen],
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "device": device,
        "machine": platform.machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    checkpoints = summary.get("checkpoints", []) + [str(p.relative_to(out_dir)) for p in saved]
    summary = {
        "config": cfg.model_dump(mode="json"),
        "corpus": corpus_facts,
        "checkpoints": sorted(dict.fromkeys(checkpoints)),
        "runs": summary.get("runs", []) + [run],
    }
    (out_dir / LADDER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return saved
