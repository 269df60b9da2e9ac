"""Benchmark (`make bench-eval`, its tasks table): lm-eval tasks scored by our backend beside lm-eval's HFLM.

The same model in memory, the same documents (the first --limit of each task, from ../shared/data/eval
through the shipped task YAMLs), the same batch size, lm-eval's own `simple_evaluate` end to end. Per task
and backend: items/s; tokens/s, counting the tokens the requests ask the model to read (each request's
(context + continuation)[-(max_length + 1):][:-1], as HFLM reads them); peak memory; and how far the
per-document answers differ (largest |Δ log-likelihood| of any choice, documents whose accuracy differs).

Models: a GPT-NeoX of Pythia-70m's shape (vocabulary 50,304, random weights, seed 0, GPT-2's BPE), where the
output head costs as much as the blocks, and the demo checkpoint (vocabulary 512). On a CPU each measurement
runs in a fresh process (peak memory = growth of the resident set while scoring); `make gpu-check` calls
`run_task` in its own process on CUDA (peak = most memory allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("arc_easy", "hellaswag", "piqa", "lambada", "winogrande")
BACKENDS = ("hflm", "ptq_eval")
DEMO = "tasks/ladders/demo/n100k/tpp320"


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_task(model, tokenizer, task: str, data_dir: str, backend: str, limit: int, batch_size: int) -> dict:
    """One timed lm-eval run of a shipped task: seconds, items, tokens read, per-document answers."""
    import torch
    from lm_eval import simple_evaluate

    from ptq_eval.evals.harness import lm_backend, load_tasks
    from ptq_eval.evals.kinds import LmEvalEval

    evaluation = LmEvalEval(
        kind="lm_eval", task=f"tasks/lm_eval/{task}_local.yaml", limit=limit, batch_size=batch_size,
        data_dir=data_dir, backend=backend,
    )  # fmt: skip
    loaded = load_tasks(evaluation)
    lm = lm_backend(backend)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    read: list[int] = []
    score = lm._loglikelihood_tokens

    def counting(requests, *args, **kwargs):
        read.extend(min(len(context) + len(more), lm.max_length + 1) - 1 for _, context, more in requests)
        return score(requests, *args, **kwargs)

    lm._loglikelihood_tokens = counting

    def evaluate(documents: int) -> dict:
        tasks = list(loaded.tasks.values())
        return simple_evaluate(
            lm, tasks=tasks, task_manager=loaded.manager, limit=documents, log_samples=True, bootstrap_iters=0
        )

    evaluate(2)  # warm-up: kernel selection, allocator
    read.clear()
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    before = 0 if cuda else _resident_kib("VmRSS")
    started = time.perf_counter()
    out = evaluate(limit)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else (_resident_kib("VmHWM") - before) / 1024
    (samples,) = out["samples"].values()
    documents = {
        str(row["doc_id"]): {
            "answers": [float(answer[0]) for answer in row["filtered_resps"]],
            "scores": {metric: row[metric] for metric in row["metrics"] if metric != "perplexity"},
        }
        for row in samples
    }
    return {"seconds": seconds, "items": len(samples), "tokens": sum(read), "peak_mib": peak, "documents": documents}


# Multiple-choice items as the shipped YAMLs prompt them (context, then " " + each choice), for scoring without
# lm-eval's task machinery (a bare GPU machine lacks `datasets`): `make gpu-check` times these.
CHOICE_PROMPTS = {
    "arc_easy": ("eval/arc_easy.jsonl", "{query}\nAnswer:"),
    "hellaswag": ("eval/hellaswag/hellaswag_val.jsonl", "{query}"),
    "piqa": ("eval/piqa.jsonl", "{query}\nAnswer:"),
}


def choice_requests(data_dir: Path, task: str, limit: int) -> tuple[list[tuple[str, str]], int]:
    """The first `limit` items of a multiple-choice task as (context, continuation) strings, and the item count."""
    path, prompt = CHOICE_PROMPTS[task]
    lines = (data_dir / path).read_text(encoding="utf-8").splitlines()[:limit]
    items = [json.loads(line) for line in lines if line.strip()]
    pairs = [(prompt.format(query=item["query"]), " " + choice) for item in items for choice in item["choices"]]
    return pairs, len(items)


def time_requests(model, tokenizer, pairs: list[tuple[str, str]], backend: str, batch_size: int) -> dict:
    """lm-eval's `loglikelihood` of the pairs through one backend: seconds, answers, peak GiB (CUDA)."""
    import torch
    from lm_eval.api.instance import Instance

    from ptq_eval.evals.harness import lm_backend

    lm = lm_backend(backend)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    def instances(chosen):
        return [Instance("loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(chosen)]

    lm.loglikelihood(instances(pairs[:8]), disable_tqdm=True)  # warm-up
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    answers = lm.loglikelihood(instances(pairs), disable_tqdm=True)
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"seconds": time.perf_counter() - started, "answers": [a[0] for a in answers], "peak_gib": peak}


def agreement(ours: dict, theirs: dict) -> tuple[float, int]:
    """Largest |Δ log-likelihood| of any choice of any document, and documents whose scores differ."""
    largest, differ = 0.0, 0
    for doc, their in theirs["documents"].items():
        our = ours["documents"][doc]
        largest = max([largest] + [abs(a - b) for a, b in zip(our["answers"], their["answers"], strict=True)])
        differ += our["scores"] != their["scores"]
    return largest, differ


def model_and_tokenizer(name: str, data_dir: str):
    """`wide`: the Pythia-70m-shaped GPT-NeoX with GPT-2's BPE; otherwise a checkpoint folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "wide":
        from shapes import GPT2, gpt2_tokenizer, pythia_shaped

        return pythia_shaped("70m"), gpt2_tokenizer(Path(data_dir) / GPT2)
    return AutoModelForCausalLM.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)


def _worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    model, tokenizer = model_and_tokenizer(args.model, args.data_dir)
    return run_task(model, tokenizer, args.task, args.data_dir, args.backend, args.limit, args.batch_size)


def _measure(args, model: str, task: str, backend: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--model", model, "--task", task, "--backend", backend]
    command += ["--limit", str(args.limit), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    command += ["--data-dir", args.data_dir]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{backend} on {task} ({model}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


HEADER = [
    "| model | task | items | backend | items/s (best) | items/s (median) | tokens read/s (best) | × HFLM (best) "
    "| peak memory (MiB) | max \\|Δ log-likelihood\\| vs HFLM | documents scored differently |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def rows(model: str, task: str, runs: dict[str, list[dict]]) -> list[str]:
    """The table's rows for one model and task: each backend's best and median speed, ratio and agreement."""
    best_hflm = max(r["items"] / r["seconds"] for r in runs["hflm"])
    lines = []
    for backend, measured in runs.items():
        speeds = [r["items"] / r["seconds"] for r in measured]
        tokens = max(r["tokens"] / r["seconds"] for r in measured)
        largest, differ = agreement(measured[0], runs["hflm"][0])
        lines.append(
            f"| {model} | {task} | {measured[0]['items']} | {backend} | {max(speeds):,.2f} "
            f"| {statistics.median(speeds):,.2f} | {tokens:,.0f} | {max(speeds) / best_hflm:.2f} "
            f"| {max(r['peak_mib'] for r in measured):,.0f} | {largest:.1e} | {differ} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="holds eval/ and tokenizers/gpt2/")
    parser.add_argument("--models", nargs="+", default=["wide", DEMO], help="`wide` and/or checkpoint folders")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--limit", type=int, default=100, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="reports/bench/eval_tasks.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    lines = [
        f"# lm-eval tasks: our backend (`ptq_eval`) beside lm-eval's HFLM ({time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs)",
        "",
        f"The first {args.limit} documents of each task (../shared/data/eval, tasks/lm_eval/*_local.yaml), batch size "
        f"{args.batch_size}, {args.threads} CPU threads, float32, best and median of {args.repeats} runs, backends "
        "alternating, each run a fresh process; lm-eval's `simple_evaluate` end to end. `wide`: a GPT-NeoX of "
        "Pythia-70m's shape (vocabulary 50,304, random weights, seed 0) with GPT-2's BPE. Peak memory: growth of "
        "the resident set while scoring. Agreement: per-document answers against HFLM's.",
        "",
        *HEADER,
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    for model in args.models:
        for task in args.tasks:
            runs: dict[str, list[dict]] = {backend: [] for backend in BACKENDS}
            for _ in range(args.repeats):
                for backend in BACKENDS:
                    runs[backend].append(_measure(args, model, task, backend))
                    last = runs[backend][-1]
                    print(f"{model} {task} {backend}: {last['items'] / last['seconds']:.2f} items/s", file=sys.stderr)
            lines += rows(model, task, runs)
            results[f"{model}:{task}"] = runs
            out.write_text("\n".join(lines) + "\n")  # a run cut short keeps its finished rows
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
