"""A trained ladder's checkpoints on disk as a table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ptq_eval.checkpoints import METADATA_FILE
from ptq_eval.errors import UserError


def local_ladder_table(directory: Path) -> pd.DataFrame:
    """The checkpoints of a reference ladder on disk, with N, D, D/N, schedule, decay done and final loss."""
    rows = []
    for path in sorted(directory.rglob(METADATA_FILE)):
        facts = json.loads(path.read_text())
        schedule = facts.get("schedule", {})
        rows.append(
            {
                "checkpoint": str(path.parent),
                "architecture": facts.get("architecture", "gpt-neox"),
                "params": facts["params"],
                "nonembedding_params": facts["nonembedding_params"],
                "tokens": facts["tokens"],
                "tokens_per_param": round(facts["tokens_per_param"], 1),
                "schedule": schedule.get("kind", ""),
                "decay_done": round(schedule.get("decay_done", float("nan")), 3),
                "train_loss": round(facts.get("train_loss_end", float("nan")), 3),
            }
        )
    if not rows:
        raise UserError(f"no checkpoints (no {METADATA_FILE}) under {directory}")
    return pd.DataFrame(rows).sort_values(["nonembedding_params", "tokens"])
