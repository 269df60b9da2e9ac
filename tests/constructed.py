"""A study's store filled with constructed results (no model runs): for report, compare and gate tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from ptq_eval.jobs import expand_jobs
from ptq_eval.spec import Study, load_study
from ptq_eval.store import MetricRow, Store

PROVENANCE = {"ptq_eval": "test", "torch": "test", "device": "cpu", "dtype": "float32", "seed": 0}


def kumar_delta(params: float, tokens: float, bits: int, method: str) -> float:
    """δ from the Kumar et al. law (GPTQ: half of RTN's)."""
    delta = 0.02 * tokens**0.6 / params**0.4 * math.exp(-bits / 1.2)
    return delta / 2 if method == "gptq" else delta


def constructed_store(
    path: Path,
    checkpoints: dict[str, tuple[float, float]],
    quant: list[dict],
    name: str = "constructed",
    delta=kumar_delta,
    ci_half_width: float = 0.1,
    seed: int = 0,
) -> Study:
    """Write the study (`path` with suffix .yaml) and one finished job per (checkpoint, config) into a store
    at `path`.

    `checkpoints` maps a name to its (non-embedding params N, tokens D); δ = delta(N, D, bits, method) times
    log-normal noise, with a CI of ± `ci_half_width` · δ; GPTQ jobs carry per-layer errors."""
    spec = {
        "name": name,
        "ladder": list(checkpoints),
        "quant": quant,
        "evals": [{"kind": "perplexity", "tokens": 4096, "seq_len": 32}],
    }
    path.with_suffix(".yaml").write_text(yaml.safe_dump(spec))
    study = load_study(path.with_suffix(".yaml"))
    rng = np.random.default_rng(seed)
    with Store(path) as store:
        for job in expand_jobs(study):
            params, tokens = checkpoints[job.checkpoint.reference]
            fp = 2.0 + 100.0 / params**0.3 + 50.0 / max(tokens, 1.0) ** 0.3  # D = 0: an untrained checkpoint
            d = delta(params, tokens, job.quant.bits, job.quant.method) * math.exp(rng.normal(0, 0.05))
            low, high = d - ci_half_width * abs(d), d + ci_half_width * abs(d)
            rows = [
                MetricRow("loss", fp + d, 4096, fp, d, low, high),
                MetricRow("perplexity", math.exp(fp + d), 4096, math.exp(fp), math.exp(fp + d) - math.exp(fp)),
            ]
            layers = [
                {"name": f"layers.{i}.{part}", "shape": [16, 16], "relative_error": d, "output_error": d * (i + 1)}
                for i in range(2)
                for part in ("attention", "mlp")
            ]
            facts = {"params": 2 * params, "nonembedding_params": params, "tokens": tokens}
            facts["tokens_per_param"] = tokens / params
            coverage = {"matrices": 8, "params": 97_000, "fraction": 0.97, "left_out_params": 0}
            details = PROVENANCE | {"quant_report": {"seconds": 0.1, "layers": layers, "coverage": coverage}}
            store.save(job.key, job.describe(), facts, details, 0.1, rows)
    return study
