"""Benchmark: quantized files read back as the quantized side of a pair, against ptq-eval's simulation of the
same config (`make bench-artifacts` → reports/bench/artifacts.md).

For every checkpoint of a ladder (the demo Llama ladder; stories260K-hf when ../shared/data has it) five files
are written by the tools that make them: GGUF Q8_0, Q4_0 and Q5_1 by the `gguf` package's quantizer (llama.cpp's
reference rounding, its layout: `tests/gguf_writing.py`, embeddings and head kept in F32), a compressed-tensors
int4 per-channel checkpoint by the compressed-tensors package (its own scales from each row's min and max:
`tests/compressed_writing.py`; it refuses groups of 32 on the demo Llama's 88-wide matrices), and a packed GPTQ
int4 group-32 checkpoint by `ptq-eval export`. One study pairs each with its base beside the simulation of the
same config (RTN onto q8_0, q4_0, q5_1; RTN onto int4 per channel; GPTQ onto int4 groups of 32 with the
float16 scales the pack stores, `scale_dtype: float16`) on the same windows, and reports, per file type: how
many of the matrices the file stores in the type (llama.cpp keeps a matrix whose width is no multiple of 32 in
F16, and so do the writer and the simulation), how many of the weights equal the simulation's bit for bit and
the largest difference, and δ (loss, nats/token) of the file and of the simulation with the largest gap
between them beside the simulation's CI. Two more rows set a file beside what a user without the exact option
would simulate: the GPTQ pack beside GPTQ with float32 scales (the default), the Q4_0 file beside the plain
integer grid in groups of 32 (float32 scale, round-half-even, its own zero point).
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from compressed_writing import write_compressed  # noqa: E402
from gguf_writing import write_gguf  # noqa: E402

from ptq_eval.artifacts import describe, stored_weights  # noqa: E402
from ptq_eval.errors import UserError  # noqa: E402
from ptq_eval.export import export_gptq  # noqa: E402
from ptq_eval.quant import QuantConfig, quantize  # noqa: E402
from ptq_eval.quant.calibration import calibration_tokens  # noqa: E402
from ptq_eval.results import study_results  # noqa: E402
from ptq_eval.runner import run_study  # noqa: E402
from ptq_eval.spec import load_study  # noqa: E402
from ptq_eval.store import Store  # noqa: E402

CALIBRATION = {"corpus": "stdlib-python", "split": "train", "samples": 128, "seq_len": 2048, "seed": 0}
GROUP = 32
KINDS = {  # file type → (simulated config as a study writes it, the same as a QuantConfig)
    "gguf Q8_0": {"method": "rtn", "format": "q8_0"},
    "gguf Q4_0": {"method": "rtn", "format": "q4_0"},
    "gguf Q5_1": {"method": "rtn", "format": "q5_1"},
    "compressed-tensors int4 per channel": {"method": "rtn", "bits": 4, "group_size": -1},
    "GPTQ pack int4 g32 (ptq-eval export)": {
        "method": "gptq",
        "bits": 4,
        "group_size": GROUP,
        "scale_dtype": "float16",
    },  # fmt: skip
}


# what else each file is set beside: the simulation a user without the exact option would run
CONTRASTS = [
    ("GPTQ pack int4 g32 (ptq-eval export)", {"method": "gptq", "bits": 4, "group_size": GROUP}),
    ("gguf Q4_0", {"method": "rtn", "bits": 4, "group_size": GROUP}),
]


def _label(entry: dict) -> str:
    return " ".join(f"{key}: {value}" for key, value in entry.items())


def _config(entry: dict) -> QuantConfig:
    fields = dict(entry)
    method, fmt = fields.pop("method"), fields.pop("format", "int")
    bits = fields.pop("bits", {"q8_0": 8, "q4_0": 4, "q5_1": 5}.get(fmt))
    group = fields.pop("group_size", GROUP)
    return QuantConfig(method=method, format=fmt, bits=bits, group_size=group, options=fields)


def write_files(checkpoint: Path, out: Path) -> dict[str, Path | str]:
    """The five files of one checkpoint (or why a tool could not write one)."""
    load = lambda: transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)  # noqa: E731
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | str] = {kind: write_gguf(load(), tokenizer, out / f"{kind[5:]}.gguf", kind[5:])
                                    for kind in KINDS if kind.startswith("gguf")}  # fmt: skip
    files["compressed-tensors int4 per channel"] = write_compressed(load(), tokenizer, out / "ct-int4-channel", 4, -1)
    try:
        export_gptq(str(checkpoint), out / "gptq-int4-g32", QuantConfig(method="gptq", bits=4, group_size=GROUP),
                    CALIBRATION)  # fmt: skip
        files["GPTQ pack int4 g32 (ptq-eval export)"] = out / "gptq-int4-g32"
    except UserError as error:  # 4-bit codes pack 8 to a word: a 20-wide matrix has no packed form
        files["GPTQ pack int4 g32 (ptq-eval export)"] = str(error)
    return files


def weight_agreement(checkpoint: Path, path: Path, config: QuantConfig) -> tuple[int, int, int, int, float]:
    """(matrices the file stores in its type, matrices the config quantizes, their weights, the weights equal in
    the file and the simulation of `config`, the largest |Δw|)."""
    base = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    stored = stored_weights(describe(str(path)), base)
    simulated = copy.deepcopy(base)
    calibration = None
    if config.needs_calibration:
        tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
        seq_len = min(CALIBRATION["seq_len"], base.config.max_position_embeddings)
        calibration = calibration_tokens(tokenizer, CALIBRATION["corpus"], CALIBRATION["split"],
                                         CALIBRATION["samples"], seq_len, CALIBRATION["seed"])  # fmt: skip
    report = quantize(simulated, config, calibration=calibration)
    parameters = dict(simulated.named_parameters())
    names = [f"{layer.name}.weight" for layer in report.layers]
    shared = [name for name in names if name in stored.quantized]
    count = identical = 0
    largest = 0.0
    for name in names:
        file_value, simulated_value = stored.tensors[name], parameters[name].detach()
        count += file_value.numel()
        identical += int((file_value == simulated_value).sum())
        largest = max(largest, float((file_value - simulated_value).abs().max()))
    return len(shared), len(names), count, identical, largest


def run_ladder(name: str, checkpoints: list[Path], work: Path, tokens: int) -> tuple[list[str], list[str]]:
    """The summary rows and per-checkpoint rows of one ladder."""
    files = {checkpoint: write_files(checkpoint, work / name / checkpoint.name / checkpoint.parent.name)
             for checkpoint in checkpoints}  # fmt: skip
    quant = [dict(entry) for entry in KINDS.values()] + [dict(entry) for _, entry in CONTRASTS]
    written = {kind: [c for c in checkpoints if isinstance(files[c][kind], Path)] for kind in KINDS}
    quant += [{"artifact": {str(c): str(files[c][kind]) for c in written[kind]}} for kind in KINDS if written[kind]]
    study = {"name": f"artifacts-{name}", "ladder": [str(c) for c in checkpoints], "quant": quant,
             "calibration": CALIBRATION,
             "evals": [{"kind": "perplexity", "corpus": "stdlib-python", "split": "validation", "tokens": tokens,
                        "seq_len": 128}]}  # fmt: skip
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    loaded = load_study(path)
    with Store(work / f"{name}.sqlite") as store:
        run_study(loaded, store)
        results = study_results(loaded, store)
    loss = results[results.metric == "loss"]
    summary, detail = [], []
    for kind, entry in [*KINDS.items(), *CONTRASTS]:
        config = _config(entry)
        gaps, within, agreement = [], 0, np.zeros(4)
        largest = 0.0
        for checkpoint in checkpoints:
            if not isinstance(files[checkpoint][kind], Path):
                detail.append(f"| {checkpoint.parent.name}/{checkpoint.name} | {kind} | {_label(entry)} | not written: "
                              f"{files[checkpoint][kind]} |||||||")  # fmt: skip
                continue
            rows = loss[loss.checkpoint == str(checkpoint)]
            real = rows[rows.artifact == str(files[checkpoint][kind])].iloc[0]
            simulated = rows[(rows.method == config.method) & (rows.artifact == "") & (rows.format == config.format)
                             & (rows.bits == config.bits) & (rows.group_size == config.group_size)
                             & (rows.scale_dtype == config.scale_dtype)].iloc[0]  # fmt: skip
            gap = real.delta - simulated.delta
            gaps.append(abs(gap))
            within += int(simulated.delta_ci_low <= real.delta <= simulated.delta_ci_high)
            shared, total, count, same, most = weight_agreement(checkpoint, files[checkpoint][kind], config)
            agreement += (shared, total, count, same)
            largest = max(largest, most)
            interval = f"{simulated.delta:.5f} [{simulated.delta_ci_low:.5f}, {simulated.delta_ci_high:.5f}]"
            identical = f"{same / count:.4%}" if count else "—"
            cells = [
                f"{checkpoint.parent.name}/{checkpoint.name}",
                kind,
                _label(entry),
                f"{real.bits_per_weight:.3f}",
                f"{shared}/{total}",
                identical,
                interval,
                f"{real.delta:.5f}",
                f"{gap:+.2e}",
            ]
            detail.append("| " + " | ".join(cells) + " |")
        if not gaps:
            summary.append(f"| {name} | {kind} | {_label(entry)} | no checkpoint's file could be written |||||")
            continue
        shared, total, count, same = agreement
        identical = f"{same / count:.4%}" if count else "—"
        cells = [name, kind, _label(entry), f"{int(shared)}/{int(total)}", identical, f"{largest:.3g}",
                 f"{max(gaps):.2e}", f"{within}/{len(gaps)}"]  # fmt: skip
        summary.append("| " + " | ".join(cells) + " |")
    return summary, detail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/bench/artifacts.md")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--work", help="where the files and stores go (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    ladders = {"demo-llama": sorted((ROOT / "tasks" / "ladders" / "demo-llama").glob("*/tpp*"))}
    stories = ROOT.parent / "shared" / "data" / "models" / "stories260K-hf"
    if stories.is_dir():
        ladders["stories260K"] = [stories]
    started = time.perf_counter()
    summary, detail = [], []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        for name, checkpoints in ladders.items():
            rows, lines = run_ladder(name, checkpoints, work, args.tokens)
            summary += rows
            detail += lines
    seconds = time.perf_counter() - started
    head = __doc__.split("\n\n", 1)[1].strip()
    text = [
        "# Quantized files against the simulation of the same config",
        "",
        head,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({torch.get_num_threads()} CPU threads), "
        f"torch {torch.__version__}, {args.tokens} eval tokens (stdlib-python validation, windows of 128), "
        f"{seconds:.0f} s in all. Command: `make bench-artifacts`.",
        "",
        "| ladder | file | simulated as | matrices stored in the type / quantized by the config | identical weights | "
        "largest \\|Δw\\| | largest \\|δ file − δ simulated\\| | δ file within the simulation's 95% CI |",
        "|---|---|---|---|---|---|---|---|",
        *summary,
        "",
        "Per checkpoint (δ: loss, nats/token; P: the file's bits per weight):",
        "",
        "| checkpoint | file | simulated as | P | matrices in the type | identical weights | δ simulated [95% CI] | "
        "δ file | file − simulated |",
        "|---|---|---|---|---|---|---|---|---|",
        *detail,
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
