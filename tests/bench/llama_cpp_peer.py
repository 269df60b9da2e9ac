"""Benchmark: llama.cpp's own quantizer as the peer (`make bench-llama-cpp` → reports/bench/llama_cpp.md).

llama.cpp is built from the source the llama-cpp-python sdist vendors (a throwaway build under
.bench-llama-cpp/, never a project dependency). For checkpoints of the demo Llama ladder and stories260K-hf,
an F32 GGUF written by `tests/gguf_writing.py` is quantized by `llama-quantize` to each file type below (with
`--leave-output-tensor --token-embedding-type f32`, so embeddings and head stay as the simulation keeps them),
read back by ptq-eval, and set beside the simulation of the same llama.cpp type where ptq-eval simulates one:
which storage type llama.cpp chose for each matrix (its fallbacks for widths its blocks do not divide), the
weights equal to the simulation's, and δ of the file and of the simulation in one study (65,536 tokens of
stdlib-python validation, windows of 128, float32). K-quant files have no simulation: their δ is reported
beside the legacy types' with their true bits per weight. K-quant blocks are 256 wide; every matrix of these
small models is narrower or not a multiple of 256, so llama.cpp stores a "Q4_K_M" file of them in its fallback
types (Q5_0, Q8_0, F16), which is what those rows measure. Bits per weight count the F16 fallbacks at 16: on
these models the 88-, 176- and 172-wide down projections are a large share of the matrices.
"""

from __future__ import annotations

import argparse
import copy
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from gguf_writing import write_gguf  # noqa: E402

from ptq_eval.artifacts import describe, stored_weights  # noqa: E402
from ptq_eval.quant import QuantConfig, quantize  # noqa: E402
from ptq_eval.results import study_results  # noqa: E402
from ptq_eval.runner import run_study  # noqa: E402
from ptq_eval.spec import load_study  # noqa: E402
from ptq_eval.store import Store  # noqa: E402

FILE_TYPES = ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
SIMULATED = {"Q8_0": "q8_0", "Q5_1": "q5_1", "Q5_0": "q5_0", "Q4_1": "q4_1", "Q4_0": "q4_0"}
BITS = {"q8_0": 8, "q5_1": 5, "q5_0": 5, "q4_1": 4, "q4_0": 4}


BUILDS: set[str] = set()  # the llama.cpp builds that quantized (what llama-quantize says of itself)


def quantize_file(binary: Path, source: Path, out: Path, file_type: str) -> Path:
    command = [str(binary), "--leave-output-tensor", "--token-embedding-type", "f32", str(source), str(out), file_type]
    done = subprocess.run(command, check=True, capture_output=True, text=True, errors="replace")
    BUILDS.update(line.strip() for line in (done.stdout + done.stderr).splitlines() if "commit" in line.lower())
    return out


def agreement(checkpoint: Path, path: Path, fmt: str) -> tuple[int, int]:
    """(weights equal in the file and the simulation of `fmt`, weights of the quantized matrices)."""
    base = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    stored = stored_weights(describe(str(path)), base)
    simulated = copy.deepcopy(base)
    report = quantize(simulated, QuantConfig(method="rtn", format=fmt, bits=BITS[fmt], group_size=32))
    parameters = dict(simulated.named_parameters())
    names = [f"{layer.name}.weight" for layer in report.layers]
    same = sum(int((stored.tensors[n] == parameters[n].detach()).sum()) for n in names)
    return same, sum(parameters[n].numel() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", required=True, help="llama.cpp's llama-quantize binary")
    parser.add_argument("--out", default="reports/bench/llama_cpp.md")
    parser.add_argument("--tokens", type=int, default=65536)
    args = parser.parse_args()
    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    checkpoints = [ROOT / "tasks" / "ladders" / "demo-llama" / name for name in ("n23k/tpp80", "n92k/tpp320")]
    stories = ROOT.parent / "shared" / "data" / "models" / "stories260K-hf"
    checkpoints += [stories] if stories.is_dir() else []
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        files: dict[Path, dict[str, Path]] = {}
        for index, checkpoint in enumerate(checkpoints):
            model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
            tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
            source = write_gguf(model, tokenizer, work / f"{index}-f32.gguf", "F32")
            files[checkpoint] = {kind: quantize_file(Path(args.quantize), source, work / f"{index}-{kind}.gguf", kind)
                                 for kind in FILE_TYPES}  # fmt: skip
        quant = [{"method": "rtn", "format": fmt} for fmt in SIMULATED.values()]
        quant += [{"artifact": {str(c): str(files[c][kind]) for c in checkpoints}} for kind in FILE_TYPES]
        study = {"name": "llama-cpp-peer", "ladder": [str(c) for c in checkpoints], "quant": quant,
                 "evals": [{"kind": "perplexity", "corpus": "stdlib-python", "split": "validation",
                            "tokens": args.tokens, "seq_len": 128}]}  # fmt: skip
        (work / "study.yaml").write_text(yaml.safe_dump(study))
        loaded = load_study(work / "study.yaml")
        with Store(work / "store.sqlite") as store:
            run_study(loaded, store)
            loss = study_results(loaded, store).query("metric == 'loss'")
        for checkpoint in checkpoints:
            own = loss[loss.checkpoint == str(checkpoint)]
            name = f"{checkpoint.parent.name}/{checkpoint.name}"
            for kind in FILE_TYPES:
                artifact = describe(str(files[checkpoint][kind]))
                real = own[own.artifact == str(files[checkpoint][kind])].iloc[0]
                mix = ", ".join(f"{t}×{n}" for t, n in artifact.types)
                simulated, same = "—", "—"
                if kind in SIMULATED:
                    fmt = SIMULATED[kind]
                    row = own[(own.method == "rtn") & (own.format == fmt)].iloc[0]
                    simulated = f"{row.delta:.5f} [{row.delta_ci_low:.5f}, {row.delta_ci_high:.5f}]"
                    equal, total = agreement(checkpoint, files[checkpoint][kind], fmt)
                    same = f"{equal / total:.4%}"
                file_delta = f"{real.delta:.5f} [{real.delta_ci_low:.5f}, {real.delta_ci_high:.5f}]"
                cells = [name, kind, mix, f"{artifact.bits_per_weight:.3f}", same, simulated, file_delta]
                rows.append("| " + " | ".join(cells) + " |")
    seconds = time.perf_counter() - started
    text = [
        "# llama.cpp's quantizer against ptq-eval's simulation of its types",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({torch.get_num_threads()} CPU threads), "
        f"torch {torch.__version__}, llama.cpp `{'; '.join(sorted(BUILDS))}` (vendored by llama-cpp-python 0.3.36), "
        f"{seconds:.0f} s. Command: `make bench-llama-cpp`.",
        "",
        "| checkpoint | file type | llama.cpp's storage types (matrices) | bits/weight | weights equal to the "
        "simulation | δ simulated [95% CI] | δ file [95% CI] |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
