"""The reference ladder: small GPT-NeoX models trained offline at controlled N and D.

Each size is one constant-learning-rate run (after a short warmup); at every target
tokens-per-parameter ratio a cooldown branch is forked off so that it ends exactly at
that D with the learning rate decayed linearly to zero (warmup-stable-decay). Every
checkpoint is therefore a finished model at its D, saved as a normal
`save_pretrained` directory with its tokenizer and a `ptq_eval.json` of facts.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
import transformers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from ptq_eval import __version__
from ptq_eval.checkpoints import METADATA_FILE, count_params
from ptq_eval.corpus import STDLIB, load_corpus, token_stream
from ptq_eval.errors import UserError
from ptq_eval.tokenizer import train_bpe


@dataclass(frozen=True)
class ModelSize:
    """Shape of one GPT-NeoX model in the ladder."""

    name: str
    hidden: int
    layers: int
    heads: int


@dataclass
class LadderConfig:
    """Everything that determines a ladder; two runs with the same config give the same weights."""

    sizes: list[ModelSize]
    tokens_per_param: list[float]
    vocab_size: int = 1024
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 25
    cooldown_fraction: float = 0.2
    weight_decay: float = 0.1
    seed: int = 0
    corpus: str = STDLIB
    extra_train_corpora: list[str] = field(default_factory=list)
    max_train_files: int | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


PRESETS: dict[str, LadderConfig] = {
    # Seconds to train: for the test suite.
    "micro": LadderConfig(
        sizes=[ModelSize("n3k", 16, 1, 2), ModelSize("n7k", 16, 2, 2)],
        tokens_per_param=[10, 40, 160],
        vocab_size=256 + 64,
        seq_len=32,
        batch_size=16,
        lr=1e-2,
        warmup_steps=5,
        max_train_files=60,
    ),
    # The committed demo ladder (tasks/ladders/demo): three sizes, D/N from 5 to 320.
    "demo": LadderConfig(
        sizes=[ModelSize("n25k", 32, 2, 2), ModelSize("n56k", 48, 2, 3), ModelSize("n100k", 64, 2, 4)],
        tokens_per_param=[5, 10, 20, 40, 80, 160, 320],
        extra_train_corpora=["python-package:torch"],
    ),
}


def model_config(size: ModelSize, cfg: LadderConfig, eos_token_id: int) -> GPTNeoXConfig:
    """The transformers config of one ladder size (no dropout, untied head)."""
    return GPTNeoXConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=4 * size.hidden,
        max_position_embeddings=cfg.seq_len,
        rotary_pct=0.25,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )


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


@dataclass(frozen=True)
class Target:
    """One checkpoint to produce: its ratio, final step and the step its cooldown starts."""

    tokens_per_param: float
    end_step: int
    cooldown_start: int


def plan_targets(nonembedding_params: int, cfg: LadderConfig) -> list[Target]:
    """Round each target D to whole steps and place its cooldown branch."""
    targets = []
    for ratio in sorted(cfg.tokens_per_param):
        end = max(2, round(ratio * nonembedding_params / cfg.tokens_per_step))
        cooldown = max(1, round(cfg.cooldown_fraction * end))
        targets.append(Target(ratio, end, end - cooldown))
    return targets


def stable_lr(step: int, cfg: LadderConfig) -> float:
    """Learning rate of the main run: linear warmup, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


def _train_step(model, optimizer, batch: torch.Tensor, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits = model(input_ids=batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _cooldown(model, optimizer, sampler: WindowSampler, target: Target, cfg: LadderConfig) -> float:
    """Run a target's cooldown branch in place; return the mean loss of its last steps."""
    start_lr = stable_lr(target.cooldown_start, cfg)
    length = target.end_step - target.cooldown_start
    losses = []
    for step in range(target.cooldown_start, target.end_step):
        lr = start_lr * (target.end_step - step) / length
        losses.append(_train_step(model, optimizer, sampler.batch(step), lr))
    tail = losses[-max(1, len(losses) // 4) :]
    return sum(tail) / len(tail)


def train_size(
    size: ModelSize,
    cfg: LadderConfig,
    tokenizer,
    sampler: WindowSampler,
    out_dir: Path,
    corpus_facts: dict,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Path]:
    """Train one size and save a checkpoint at each target ratio; return their directories."""
    torch.manual_seed(cfg.seed)
    model = GPTNeoXForCausalLM(model_config(size, cfg, tokenizer.eos_token_id))
    model.train()
    params, nonembedding = count_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    targets = plan_targets(nonembedding, cfg)
    saved = []
    started = time.perf_counter()
    step = 0
    for target in targets:
        while step < target.cooldown_start:
            _train_step(model, optimizer, sampler.batch(step), stable_lr(step, cfg))
            step += 1
        main_state = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
        final_loss = _cooldown(model, optimizer, sampler, target, cfg)
        tokens = target.end_step * cfg.tokens_per_step
        directory = out_dir / size.name / f"tpp{target.tokens_per_param:g}"
        model.save_pretrained(directory)
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
            "schedule": {
                "kind": "wsd",
                "description": "linear warmup, constant LR, linear cooldown to 0 branched off at each target D",
                "warmup_steps": cfg.warmup_steps,
                "cooldown_start_step": target.cooldown_start,
                "cooldown_fraction": cfg.cooldown_fraction,
                "decay_done": 1.0,
            },
            "train_loss_end": final_loss,
            "epochs": sampler.epochs(target.end_step),
            "train_corpus": corpus_facts,
            "trained_with": {
                "ptq_eval": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }
        (directory / METADATA_FILE).write_text(json.dumps(facts, indent=2) + "\n")
        saved.append(directory)
        progress(
            f"{size.name} D/N={facts['tokens_per_param']:.1f} step={target.end_step} "
            f"loss={final_loss:.3f} ({time.perf_counter() - started:.0f}s)"
        )
        model.load_state_dict(main_state[0])
        optimizer.load_state_dict(main_state[1])
    return saved


def train_ladder(
    cfg: LadderConfig,
    out_dir: Path,
    sizes: list[str] | None = None,
    progress: Callable[[str], None] = lambda message: None,
) -> list[Path]:
    """Train the tokenizer, then every (selected) size; write `ladder.json`; return checkpoint dirs."""
    started = time.perf_counter()
    train = load_corpus(cfg.corpus, "train")
    if cfg.max_train_files is not None:
        train = train.subset(list(range(min(len(train), cfg.max_train_files))))
    tokenizer = train_bpe(train.texts(), cfg.vocab_size)
    parts = [train] + [load_corpus(name, "train") for name in cfg.extra_train_corpora]
    stream = torch.cat([token_stream(tokenizer, part) for part in parts])
    corpus_facts = {
        "tokenizer_trained_on": train.describe(),
        "parts": [part.describe() for part in parts],
        "tokens": len(stream),
    }
    progress(f"training stream: {len(stream):,} tokens from {sum(len(p) for p in parts)} files")
    sampler = WindowSampler(stream, cfg)
    chosen = [s for s in cfg.sizes if sizes is None or s.name in sizes]
    saved = []
    for size in chosen:
        saved += train_size(size, cfg, tokenizer, sampler, out_dir, corpus_facts, progress)
    summary = {
        "config": asdict(cfg),
        "corpus": corpus_facts,
        "checkpoints": [str(p.relative_to(out_dir)) for p in saved],
        "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    (out_dir / "ladder.json").write_text(json.dumps(summary, indent=2) + "\n")
    return saved


def local_ladder_table(directory: Path) -> pd.DataFrame:
    """The checkpoints of a reference ladder on disk, with N, D, D/N, schedule and final training loss."""
    rows = []
    for path in sorted(directory.rglob(METADATA_FILE)):
        facts = json.loads(path.read_text())
        rows.append(
            {
                "checkpoint": str(path.parent),
                "params": facts["params"],
                "nonembedding_params": facts["nonembedding_params"],
                "tokens": facts["tokens"],
                "tokens_per_param": round(facts["tokens_per_param"], 1),
                "schedule": facts.get("schedule", {}).get("kind", ""),
                "train_loss": round(facts.get("train_loss_end", float("nan")), 3),
            }
        )
    if not rows:
        raise UserError(f"no checkpoints (no {METADATA_FILE}) under {directory}")
    return pd.DataFrame(rows).sort_values(["nonembedding_params", "tokens"])
