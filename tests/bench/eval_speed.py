"""Benchmark (`make bench-eval`): our rolling-window perplexity beside lm-eval's `loglikelihood_rolling`.

Same checkpoint, same documents (the first ones of each corpus that together hold ≥ --tokens
tokens), same rolling rule (context = the model's, disjoint predictions), same batch size.
Implementations: ours in float32 (exact), ours with bfloat16 autocast, and lm-eval 0.4.x through
`HFLM` on the model in memory (float32), at the same batch size and at lm-eval's default (1).
Each measurement runs in a fresh process, after a one-document warm-up, so its peak memory is
its own: "peak memory" is the growth of the resident set (VmHWM, reset just before scoring)
over what the process held when scoring started. Implementations alternate and each is timed
--repeats times; the table reports the best and the median.

Corpora: the reference corpus's validation split (tasks/lm_eval/stdlib_python.yaml) always, and
WikiText-2 raw test (tasks/lm_eval/wikitext2_raw.yaml) when --data-dir holds it.

`--wide-vocabulary` scores a GPT-NeoX of Pythia-14m's shape instead (vocabulary 50,304, hidden 128,
6 layers, context 512; random weights, seed 0, the demo tokenizer): there the logits, not the
model, dominate memory, which is what the chunked output head is for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPORA = {
    "stdlib_python": ("tasks/lm_eval/stdlib_python.yaml", None),
    "wikitext2_raw": ("tasks/lm_eval/wikitext2_raw.yaml", "text/wikitext-2-raw/wiki.test.raw"),
}
IMPLEMENTATIONS = ("ours-fp32", "ours-bf16", "lm-eval-fp32", "lm-eval-fp32-batch1")
METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def _texts(corpus: str, data_dir: str | None) -> list[str]:
    from ptq_eval.evals.task_data import corpus_documents, wikitext_articles

    if corpus == "stdlib_python":
        return list(corpus_documents()["validation"]["text"])
    return list(wikitext_articles({"test": CORPORA[corpus][1]}, data_dir)["test"]["page"])


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(args) -> dict:
    """One timed scoring in this process; returns its numbers as a dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptq_eval.evals.harness import evaluate_task, load_tasks
    from ptq_eval.evals.kinds import LmEvalEval
    from ptq_eval.evals.perplexity import document_metrics, window_losses
    from ptq_eval.evals.windows import rolling_windows

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint).eval()
    texts = _texts(args.corpus, args.data_dir)[: args.documents]
    context = model.config.max_position_embeddings
    autocast = "bfloat16" if args.implementation.endswith("bf16") else None

    def score(documents: int) -> dict[str, float]:
        if args.implementation.startswith("lm-eval"):
            task = CORPORA[args.corpus][0]
            batch_size = 1 if args.implementation.endswith("batch1") else args.batch_size
            evaluation = LmEvalEval(
                kind="lm_eval",
                task=task,
                limit=documents,
                batch_size=batch_size,
                data_dir=args.data_dir,
                backend="hflm",
            )
            return {m.name: m.value for m in evaluate_task(model, tokenizer, loaded, evaluation).metrics}
        windows = rolling_windows(tokenizer, texts[:documents], context)
        losses = window_losses(model, windows, args.batch_size, autocast)
        return {m.name: m.value for m in document_metrics(losses, windows)}

    if args.implementation.startswith("lm-eval"):
        task = CORPORA[args.corpus][0]
        loaded = load_tasks(LmEvalEval(kind="lm_eval", task=task, data_dir=args.data_dir))
    score(1)  # warm-up (first-call kernel setup), the same for every implementation
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    before = _memory_kib("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    metrics = score(args.documents)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    tokens = rolling_windows(tokenizer, texts, context).predictions
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": tokens,
        "peak_growth_mib": (_memory_kib("VmHWM") - before) / 1024,
        "metrics": {name: metrics[name] for name in METRICS},
    }


def _wide_vocabulary_checkpoint(directory: Path, tokenizer_from: str) -> str:
    """A random GPT-NeoX with Pythia-14m's vocabulary and width, saved with the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=512,
        rotary_pct=0.25,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPTNeoXForCausalLM(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(directory)
    return str(directory)


def _documents_for(checkpoint: str, corpus: str, data_dir: str | None, tokens: int) -> tuple[int, int]:
    """How many leading documents hold ≥ `tokens` tokens (rolling predictions), and their token count."""
    from transformers import AutoTokenizer

    from ptq_eval.corpus import token_documents

    lengths = [len(ids) for ids in token_documents(AutoTokenizer.from_pretrained(checkpoint), _texts(corpus, data_dir))]
    total = 0
    for count, length in enumerate(lengths, 1):
        total += length
        if total >= tokens:
            return count, total
    raise ValueError(f"{corpus} holds {total} tokens, fewer than --tokens {tokens}")


def _measure(args, corpus: str, implementation: str, documents: int) -> dict:
    command = [sys.executable, __file__, "--worker", "--corpus", corpus, "--implementation", implementation]
    command += ["--documents", str(documents), "--checkpoint", args.checkpoint, "--batch-size", str(args.batch_size)]
    command += ["--threads", str(args.threads)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{implementation} on {corpus} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _model_label(args) -> str:
    """What was scored, as the table states it (the wide model lives in a temporary folder)."""
    if args.wide_vocabulary:
        return "A GPT-NeoX of Pythia-14m's shape (vocabulary 50,304, random weights, seed 0; context 512)"
    return f"Checkpoint `{args.checkpoint}`"


def _report(args, results: dict) -> str:
    lines = [
        f"# Rolling-window perplexity: ours vs lm-eval ({time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs)",
        "",
        f"{_model_label(args)}, batch size {args.batch_size}, {args.threads} CPU threads "
        f"({platform.processor() or platform.machine()}), best and median of {args.repeats} runs each, "
        "implementations alternating, each run a fresh process. Tokens/s counts predicted tokens; peak memory "
        "is the growth of the resident set while scoring. Tokens per CPU-second (all threads) is less sensitive to "
        "other load on the machine than wall-clock tokens/s. Relative difference: |ours − lm-eval| / lm-eval.",
        "",
        "| corpus | documents | tokens | implementation | tokens/s (best) | tokens/s (median) | × lm-eval (best) "
        "| tokens/CPU-s (best) | × lm-eval (CPU) | peak memory (MiB) | word_perplexity | byte_perplexity "
        "| bits_per_byte | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for corpus, (documents, runs) in results.items():
        reference = runs["lm-eval-fp32"][0]["metrics"]
        best_lm_eval = max(r["tokens"] / r["seconds"] for r in runs["lm-eval-fp32"])
        best_lm_eval_cpu = max(r["tokens"] / r["cpu_seconds"] for r in runs["lm-eval-fp32"])
        for implementation, measured in runs.items():
            speeds = [r["tokens"] / r["seconds"] for r in measured]
            cpu = max(r["tokens"] / r["cpu_seconds"] for r in measured)
            metrics = measured[0]["metrics"]
            difference = max(abs(metrics[m] - reference[m]) / abs(reference[m]) for m in METRICS)
            peak = max(r["peak_growth_mib"] for r in measured)
            lines.append(
                f"| {corpus} | {documents} | {measured[0]['tokens']} | {implementation} | {max(speeds):,.0f} "
                f"| {statistics.median(speeds):,.0f} | {max(speeds) / best_lm_eval:.2f} | {cpu:,.0f} "
                f"| {cpu / best_lm_eval_cpu:.2f} | {peak:.0f} | "
                + " | ".join(f"{metrics[m]:.8g}" for m in METRICS)
                + f" | {difference:.1e} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="tasks/ladders/demo/n100k/tpp320")
    parser.add_argument("--tokens", type=int, default=100_000, help="score the first documents holding this many")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", help="folder holding text/wikitext-2-raw/wiki.test.raw (e.g. ../shared/data)")
    parser.add_argument("--out", default="reports/bench/eval.md")
    parser.add_argument("--wide-vocabulary", action="store_true", help="a 50k-vocabulary model (see above)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", choices=sorted(CORPORA), help=argparse.SUPPRESS)
    parser.add_argument("--implementation", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--documents", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    workdir = tempfile.TemporaryDirectory(prefix="ptq-eval-bench-")  # removed at exit
    if args.wide_vocabulary:
        args.checkpoint = _wide_vocabulary_checkpoint(Path(workdir.name), args.checkpoint)
    corpora = ["stdlib_python"]
    if args.data_dir and (Path(args.data_dir) / CORPORA["wikitext2_raw"][1]).is_file():
        corpora.append("wikitext2_raw")
    results = {}
    for corpus in corpora:
        documents, tokens = _documents_for(args.checkpoint, corpus, args.data_dir, args.tokens)
        print(f"{corpus}: {documents} documents, {tokens} tokens", file=sys.stderr)
        runs: dict[str, list[dict]] = {name: [] for name in IMPLEMENTATIONS}
        for _ in range(args.repeats):
            for implementation in IMPLEMENTATIONS:
                runs[implementation].append(_measure(args, corpus, implementation, documents))
                speed = runs[implementation][-1]["tokens"] / runs[implementation][-1]["seconds"]
                print(f"  {implementation}: {speed:,.0f} tokens/s", file=sys.stderr)
        results[corpus] = (documents, runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_report(args, results))
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
