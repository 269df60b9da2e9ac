"""Malformed input of every kind, through the command line as a user meets it: the exit code, one line naming
the offending thing, and never a traceback. Codes: 1 a checkpoint failed (recorded, the study went on), 3 bad
input; 0/2 stay the gate's pass/undecided."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest
import torch

from ptq_eval import cli

EVAL = "{kind: perplexity, tokens: 512, seq_len: 16}"
GOOD_QUANT = "[{method: rtn, bits: 4}]"


def study(ladder: str = "[a/b@c]", quant: str = GOOD_QUANT, evals: str = f"[{EVAL}]", extra: str = "") -> str:
    return f"name: x\nladder: {ladder}\nquant: {quant}\nevals: {evals}\n{extra}"


def damaged(checkpoint):
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def tokens_as(value):
    def change(checkpoint):
        facts = json.loads((checkpoint / "ptq_eval.json").read_text())
        (checkpoint / "ptq_eval.json").write_text(json.dumps(facts | {"tokens": value}))

    return change


def not_json(checkpoint):
    (checkpoint / "ptq_eval.json").write_text("{tokens: 5")


def config_missing(checkpoint):
    (checkpoint / "config.json").unlink()


# (case, study text or None, extra CLI arguments, expected exit code, expected text)
STUDIES = [
    (
        "bits word",
        study(quant="[{method: rtn, bits: four}]"),
        3,
        "quant[0].bits: 'four' is not an integer (accepted: 2..16",
    ),
    (
        "bits list item",
        study(quant="[{method: rtn, bits: [4, four]}]"),
        3,
        "quant[0].bits[1]: 'four' is not an integer",
    ),
    ("bits range", study(quant="[{method: rtn, bits: 1}]"), 3, "quant[0].bits: 1 is not in 2..16"),
    (
        "symmetric word",
        study(quant="[{method: rtn, bits: 4, symmetric: maybe}]"),
        3,
        "quant[0].symmetric: 'maybe' is not true or false",
    ),
    (
        "group size float",
        study(quant="[{method: rtn, bits: 4, group_size: 3.5}]"),
        3,
        "quant[0].group_size: 3.5 is not a whole number",
    ),
    (
        "group size negative",
        study(quant="[{method: rtn, bits: 4, group_size: -5}]"),
        3,
        "quant[0].group_size: -5 is not accepted",
    ),
    ("unknown method", study(quant="[{method: smoothquant, bits: 4}]"), 3, "method: 'smoothquant' is not a method"),
    (
        "gptq option on rtn",
        study(quant="[{method: rtn, bits: 4, act_order: true}]"),
        3,
        "act_order applies to method gptq only",
    ),
    (
        "sequential value",
        study(quant="[{method: gptq, bits: 4, sequential: sometimes}]"),
        3,
        "quant[0]: sequential: Input should be 'block', 'layer' or 'none'",
    ),
    ("duplicate key", study(quant="[{method: rtn, bits: 4, bits: 3}]"), 3, "key 'bits' is given twice in one mapping"),
    ("unknown key", study(extra="colour: red\n"), 3, "colour: unknown key"),
    ("missing key", "name: x\nladder: [a]\nquant: [{method: rtn, bits: 4}]\n", 3, "evals: required key is missing"),
    ("bad name", study(extra="").replace("name: x", "name: 'a b'"), 3, "name: String should match pattern"),
    ("empty file", "", 3, "the file is empty; expected a mapping of name, ladder, quant, evals"),
    ("unhashable key", "? [a, b]\n: 1\n", 3, "line 1, column 3: a key must be a plain value (text or a number)"),
    ("list document", "- a\n- b\n", 3, "(top level): ['a', 'b'] is not a mapping"),
    ("YAML syntax", "name: x\nladder: [a\n", 3, "not valid YAML: line 3, column 1"),
    ("tab indentation", "name: x\n\tladder: [a]\n", 3, "not valid YAML"),
    ("tokens word", study(evals="[{kind: perplexity, tokens: many}]"), 3, "evals[0].tokens: 'many' is not an integer"),
    ("eval kind", study(evals="[{kind: bleu}]"), 3, "evals[0]: Input tag 'bleu'"),
    (
        "stride on spread",
        study(evals="[{kind: perplexity, stride: 4}]"),
        3,
        "stride and documents apply to windows: rolling",
    ),
    (
        "bos value",
        study(evals="[{kind: perplexity, bos: sometimes}]"),
        3,
        "evals[0].bos: Input should be 'auto', 'always' or 'never'",
    ),
    ("dtype", study(extra="dtype: int8\n"), 3, "dtype: Input should be 'float32', 'bfloat16' or 'float16'"),
    ("device unknown", study(extra="device: gpu\n"), 3, "device: 'gpu' is not a device torch knows"),
    (
        "calibration is eval",
        study(quant="[{method: gptq, bits: 4}]", extra="calibration: {split: validation}\n"),
        3,
        "calibration uses 'stdlib-python' split 'validation', which an eval scores",
    ),
    ("unknown family", study(ladder="[{family: gpt9, sizes: [1b], steps: [1]}]"), 3, "unknown ladder family 'gpt9'"),
    (
        "unknown family size",
        study(ladder="[{family: pythia, sizes: [7b], steps: [1]}]"),
        3,
        "family pythia has no size '7b'",
    ),
    ("glob matches nothing", study(ladder="['/nowhere/*/tpp*']"), 3, "matches no checkpoint directory"),
    ("unknown corpus", study(evals="[{kind: perplexity, corpus: nope}]"), 3, "unknown corpus 'nope'"),
    ("stdlib split", study(evals="[{kind: perplexity, split: test}]"), 3, "corpus 'stdlib-python' has no split 'test'"),
    ("dataset offline", study(evals="[{kind: perplexity, corpus: 'hf:nobody/nothing'}]"), 3, "cannot load dataset"),
    ("missing revision", study(), 1, "checkpoint a/b@c failed: a/b@c: revision 'c' is not in the local hub cache"),
]


@pytest.mark.parametrize(("case", "text", "code", "message"), STUDIES, ids=[case[0] for case in STUDIES])
def test_a_malformed_study_is_one_clear_line(tmp_path, capsys, case, text, code, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert cli.main(["run", str(path), "--store", str(tmp_path / "s.sqlite")]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


CHECKPOINTS = [
    ("truncated weights", damaged, 1, "model.safetensors: damaged safetensors file"),
    ("tokens null", tokens_as(None), 1, "ptq_eval.json: tokens must be a positive number (tokens seen, D), not None"),
    ("tokens text", tokens_as("4e9"), 1, "ptq_eval.json: tokens must be a positive number (tokens seen, D), not '4e9'"),
    ("tokens negative", tokens_as(-3), 1, "tokens must be a positive number (tokens seen, D), not -3"),
    ("metadata not JSON", not_json, 1, "ptq_eval.json is not valid JSON"),
    ("no config", config_missing, 1, "cannot load"),
]


@pytest.mark.parametrize(("case", "damage", "code", "message"), CHECKPOINTS, ids=[case[0] for case in CHECKPOINTS])
def test_a_damaged_checkpoint_fails_alone_naming_the_file(
    micro_checkpoint, tmp_path, capsys, case, damage, code, message
):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(micro_checkpoint, checkpoint)
    damage(checkpoint)
    path = tmp_path / "study.yaml"
    path.write_text(study(ladder=f"['{checkpoint}']"))
    assert cli.main(["run", str(path), "--store", str(tmp_path / "s.sqlite")]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def garbage(path):
    path.write_bytes(b"this is not a database, it is a note\n" * 100)


def foreign(path):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE photos (id INTEGER, name TEXT)")


STORES = [
    ("garbage file", garbage, "not a ptq-eval store (file is not a database)"),
    ("foreign database", foreign, "an SQLite database of something else (tables: photos)"),
    ("a directory", lambda path: path.mkdir(), "is a directory, not a store file"),
]


@pytest.mark.parametrize(("case", "make", "message"), STORES, ids=[case[0] for case in STORES])
def test_a_store_that_is_not_a_store_is_refused_and_left_untouched(tmp_path, capsys, case, make, message):
    store = tmp_path / "store.sqlite"
    make(store)
    before = store.read_bytes() if store.is_file() else None
    path = tmp_path / "study.yaml"
    path.write_text(study())
    assert cli.main(["run", str(path), "--store", str(store)]) == 3
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (store.read_bytes() if store.is_file() else None) == before


POLICY = "name: p\nquant: [{method: rtn, bits: 4}]\nevals: [" + EVAL + "]\nbudgets: [{kind: absolute, max: 0.01}]\n"
COMMANDS = [
    ("unknown command", ["launch"], "invalid choice: 'launch'"),
    ("missing argument", ["run"], "the following arguments are required: study"),
    ("bad format", ["results", "s.yaml", "--format", "xml"], "invalid choice: 'xml'"),
    ("bad predict", ["fit", "--results", "r.csv", "--predict", "N=1"], "--predict 'N=1': expected N=...,D=...,P=..."),
    ("missing study", ["results", "nowhere.yaml"], "nowhere.yaml: no such study file"),
    ("missing policy", ["gate", "m", "--policy", "nowhere.yaml"], "nowhere.yaml: no such policy file"),
    ("policy with ladder", ["gate", "m", "--policy", "POLICY", "--no-run"], "a policy has no ladder"),
    ("budget without checkpoint", ["gate", "m", "--policy", "BASELINE", "--no-run"], "kind baseline needs checkpoint"),
    ("budget kind", ["gate", "m", "--policy", "KIND", "--no-run"], "budgets[0].kind: Input should be"),
]


def exit_code(argv: list[str]) -> int:
    """What the process would exit with (argparse exits by itself; every command returns its code)."""
    try:
        return cli.main(argv)
    except SystemExit as exited:
        return exited.code


@pytest.mark.parametrize(("case", "argv", "message"), COMMANDS, ids=[case[0] for case in COMMANDS])
def test_bad_arguments_and_policies_exit_3(tmp_path, capsys, monkeypatch, case, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "POLICY").write_text(POLICY + "ladder: [a]\n")
    (tmp_path / "BASELINE").write_text(POLICY.replace("{kind: absolute, max: 0.01}", "{kind: baseline, max: 0.01}"))
    (tmp_path / "KIND").write_text(POLICY.replace("kind: absolute", "kind: absolut"))
    assert exit_code(argv) == 3
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_argparse_errors_exit_3_not_the_gates_undecided(capsys):
    assert exit_code(["gate"]) == 3


def test_an_internal_error_exits_4_in_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    path = tmp_path / "study.yaml"
    path.write_text(study())
    monkeypatch.setattr("ptq_eval.runner.expand_jobs", lambda study: 1 / 0)
    assert cli.main(["run", str(path), "--store", str(tmp_path / "s.sqlite")]) == 4
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "run", str(path), "--store", str(tmp_path / "s.sqlite")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_work(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(study(extra="device: cuda\n"))
    assert cli.main(["run", str(path), "--store", str(tmp_path / "s.sqlite")]) == 3
    assert "device 'cuda': this machine has 0 CUDA devices" in capsys.readouterr().err


def test_the_gate_tells_an_internal_error_from_a_verdict(tmp_path, capsys, monkeypatch):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    (tmp_path / "s.sqlite").write_bytes(b"")  # an empty file: SQLite starts a new store in it
    monkeypatch.setattr("ptq_eval.gate.decide", lambda *args: {}["boom"])  # a bug inside the gate
    argv = ["gate", "m", "--policy", str(policy), "--store", str(tmp_path / "s.sqlite"), "--no-run"]
    assert exit_code(argv) == 4
    assert "internal error: KeyError" in capsys.readouterr().err


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    from ptq_eval.spec import load_study

    path = tmp_path / "study.yaml"
    path.write_text(
        "name: x\nladder: [a]\nquant:\n  - &rtn {method: rtn, bits: 4, group_size: 32}\n"
        "  - {<<: *rtn, bits: 3}\nevals: [{kind: perplexity}]\n"
    )
    grids = load_study(path).quant
    assert [(grid.bits, grid.group_size) for grid in grids] == [(4, 32), (3, 32)]


def test_the_fallback_family_never_reads_a_count_that_restarts():
    from ptq_eval.checkpoints import CheckpointRef, tokens_from_schedule

    assert tokens_from_schedule(CheckpointRef.parse("org/olmo2-like@stage2-ingredient1-step1000-tokens5B")) is None
    assert tokens_from_schedule(CheckpointRef.parse("org/model@stage1-step1000-tokens5B"))[0] == 5 * 10**9
