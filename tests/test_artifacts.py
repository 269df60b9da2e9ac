"""Quantized files as the quantized side of a pair: GGUF files written by the gguf package from our own
checkpoints (the committed demo ladder, a tiny Llama whose query and key rows llama.cpp reorders, stories260K)
and our own GPTQ export. What a file says of itself, the weights it holds against the simulation of the same
config, its δ in a study, and the bad files that stop a run before anything is written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from ptq_eval.artifacts import ArtifactError, check_base, describe, stored_weights
from ptq_eval.cli import main
from ptq_eval.errors import EXIT_INPUT
from ptq_eval.jobs import expand_jobs
from ptq_eval.quant import QuantConfig, quantize
from ptq_eval.quant.formats import quantize_tensor
from ptq_eval.results import study_results
from ptq_eval.spec import StudyError, load_study
from ptq_eval.store import Store

gguf = pytest.importorskip("gguf")
from gguf_writing import write_gguf  # noqa: E402  (needs gguf)

DEMO = Path(__file__).resolve().parent.parent / "tasks" / "ladders" / "demo" / "n25k"
LLAMA_LADDER = DEMO.parent.parent / "demo-llama"
LLAMA_TOKENIZER = LLAMA_LADDER / "n9k" / "tpp20"
STORIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "models" / "stories260K-hf"
EVAL = {"kind": "perplexity", "corpus": "stdlib-python", "split": "validation", "tokens": 4096, "seq_len": 128}


def _load(directory: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model, transformers.AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory) -> dict[str, Path]:
    """Q4_0, Q8_0 and Q5_1 files of the demo ladder's n25k/tpp20, and a Q4_0 file of n25k/tpp320."""
    out = tmp_path_factory.mktemp("gguf")
    files = {}
    for checkpoint, kinds in (("tpp20", ("Q4_0", "Q8_0", "Q5_1")), ("tpp320", ("Q4_0",))):
        model, tokenizer = _load(DEMO / checkpoint)
        for kind in kinds:
            files[f"{checkpoint}-{kind}"] = write_gguf(model, tokenizer, out / f"{checkpoint}-{kind}.gguf", kind)
    return files


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A seeded Llama (grouped-query attention, widths multiples of 32) saved with the demo Llama tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(LLAMA_TOKENIZER)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(("kind", "bits", "per_weight"), [("Q4_0", 4, 4.5), ("Q8_0", 8, 8.5), ("Q5_1", 5, 6.0)])
def test_a_gguf_file_says_its_type_bits_and_true_bits_per_weight(demo_files, kind, bits, per_weight):
    artifact = describe(str(demo_files[f"tpp20-{kind}"]))
    assert (artifact.artifact_type, artifact.quantized_as, artifact.format) == ("gguf", kind, kind.lower())
    assert (artifact.bits, artifact.group_size, artifact.bits_per_weight) == (bits, 32, per_weight)
    assert artifact.architectures == ("gpt_neox",) and artifact.types == ((kind, 8),)


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0", "Q5_1"])
def test_a_gguf_file_holds_the_simulation_of_its_type_bit_for_bit(demo_files, kind):
    model, tokenizer = _load(DEMO / "tpp20")
    artifact = describe(str(demo_files[f"tpp20-{kind}"]))
    check_base(artifact, str(DEMO / "tpp20"), tokenizer)
    stored = stored_weights(artifact, model)
    simulated, _ = _load(DEMO / "tpp20")
    report = quantize(simulated, QuantConfig(method="rtn", format=kind.lower(), bits=artifact.bits, group_size=32))
    quantized = {f"{layer.name}.weight" for layer in report.layers}
    assert stored.quantized == quantized
    for name, parameter in simulated.named_parameters():
        assert torch.equal(stored.tensors[name], parameter.detach()), name


def test_llama_s_reordered_query_and_key_rows_are_put_back(tiny_llama, tmp_path):
    model, tokenizer = _load(tiny_llama)
    path = write_gguf(model, tokenizer, tmp_path / "llama-q8.gguf", "Q8_0")
    artifact = describe(str(path))
    check_base(artifact, str(tiny_llama), tokenizer)
    stored = stored_weights(artifact, model)
    for name, parameter in model.named_parameters():
        expected = parameter.detach()
        if name in stored.quantized:
            expected = quantize_tensor(expected, 8, 32, True, "q8_0")
        assert torch.equal(stored.tensors[name], expected), name


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0"])
def test_transformers_own_gguf_loader_reads_the_same_weights(tiny_llama, tmp_path, kind):
    """A peer's reading of the same file (transformers de-quantizes GGUF with the gguf package and undoes the
    row reordering itself): every parameter equal to ours."""
    model, tokenizer = _load(tiny_llama)
    write_gguf(model, tokenizer, tmp_path / "m.gguf", kind)
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    stored = stored_weights(describe(str(tmp_path / "m.gguf")), model)
    theirs = dict(peer.named_parameters())
    assert stored.tensors.keys() == theirs.keys()
    for name, value in stored.tensors.items():
        assert torch.equal(value, theirs[name].detach()), name


@pytest.mark.parametrize("checkpoint", [LLAMA_LADDER / "n23k" / "tpp80", STORIES], ids=["demo-llama", "stories260K"])
def test_trained_llamas_read_back_as_their_simulation_f16_fallbacks_included(tmp_path, checkpoint):
    """The demo Llama's 88-wide and stories260K's 172-wide down projections have no blocks of 32: llama.cpp
    stores them in F16, and so do the file and the simulation of q4_0; every other matrix is Q4_0, Llama's
    reordered rows put back."""
    if not checkpoint.is_dir():
        pytest.skip(f"{checkpoint} is not here (../shared/data)")
    model, tokenizer = _load(checkpoint)
    path = write_gguf(model, tokenizer, tmp_path / "q4_0.gguf", "Q4_0")
    artifact = describe(str(path))
    layers = model.config.num_hidden_layers
    assert artifact.format == "gguf" and artifact.quantized_as == "Q4_0" and dict(artifact.types)["F16"] == layers
    check_base(artifact, str(checkpoint), tokenizer)
    stored = stored_weights(artifact, model)
    assert {stored.types[name] for name in stored.tensors if name.endswith("down_proj.weight")} == {"F16"}
    quantize(model, QuantConfig(method="rtn", format="q4_0", bits=4, group_size=32))
    for name, parameter in model.named_parameters():
        assert torch.equal(stored.tensors[name], parameter.detach()), name


def _study(tmp_path: Path, quant: list, ladder: list[str], name: str = "artifacts") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "ladder": ladder, "quant": quant, "evals": [EVAL]}))
    return path


def test_a_ladder_of_files_pairs_each_with_its_base_and_equals_the_simulation(demo_files, tmp_path, capsys):
    ladder = [str(DEMO / "tpp20"), str(DEMO / "tpp320")]
    files = {}
    for base, name in zip(ladder, ("tpp20-Q4_0", "tpp320-Q4_0"), strict=True):
        files[base] = str(shutil.copy(demo_files[name], tmp_path / f"{name}.gguf"))
    study = _study(tmp_path, [{"method": "rtn", "format": "q4_0"}, {"artifact": files}], ladder)
    store = tmp_path / "store.sqlite"
    assert main(["run", str(study), "--store", str(store)]) == 0
    results = study_results(load_study(study), Store(store))
    loss = results[results.metric == "loss"].set_index(["checkpoint", "method"])
    for checkpoint in ladder:
        simulated, real = loss.loc[(checkpoint, "rtn")], loss.loc[(checkpoint, "artifact")]
        assert real.quant_value == simulated.quant_value and real.delta == simulated.delta
        assert real.bits_per_weight == 4.5 and real.quantized_as == "Q4_0" and real.artifact_type == "gguf"
    assert set(results[results.method == "artifact"].artifact) == set(files.values())
    assert main(["report", str(study), "--store", str(store), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "4-bit gguf Q4_0 group32" in report  # a file is named by its type and its own name
    capsys.readouterr()
    assert main(["run", str(study), "--store", str(store)]) == 0  # the same files: nothing computed again
    assert "4/4 jobs already in the store" in capsys.readouterr().err
    shutil.copy(demo_files["tpp320-Q4_0"], files[ladder[0]])  # another file at the same path: measured again
    assert main(["run", str(study), "--store", str(store)]) == 0
    assert "computing again 1 stored jobs: artifact file changed" in capsys.readouterr().err


def _refused(tmp_path: Path, quant: list, ladder: list[str], message: str, capsys) -> None:
    study = _study(tmp_path, quant, ladder)
    store = tmp_path / "refused.sqlite"
    assert main(["run", str(study), "--store", str(store)]) == EXIT_INPUT
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not store.exists() or Store(store).frame().empty  # nothing written


def test_a_file_of_another_base_is_refused_by_the_mismatch_before_any_work(demo_files, tmp_path, capsys):
    other = DEMO.parent / "n56k" / "tpp20"
    _refused(tmp_path, [{"artifact": str(demo_files["tpp20-Q4_0"])}], [str(other)],
             "gpt_neox.embed_in.weight is [1024, 32] in the file, [1024, 48] in the base", capsys)  # fmt: skip


def test_a_file_of_another_tokenizer_is_refused(demo_files, tmp_path, capsys):
    base = tmp_path / "retokenized"
    shutil.copytree(DEMO / "tpp20", base)
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    vocabulary = tokenizer["model"]["vocab"]
    first, second = sorted(vocabulary, key=vocabulary.get)[300:302]
    vocabulary[first], vocabulary[second] = vocabulary[second], vocabulary[first]
    (base / "tokenizer.json").write_text(json.dumps(tokenizer))
    _refused(tmp_path, [{"artifact": str(demo_files["tpp20-Q4_0"])}], [str(base)], "does not tokenize as its base",
             capsys)  # fmt: skip


def test_an_architecture_without_a_name_table_here_is_refused_by_name(tmp_path, capsys):
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(path, "phi3")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_qkv.weight", torch.zeros(96, 32).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _refused(tmp_path, [{"artifact": str(path)}], [str(DEMO / "tpp20")], "GGUF architecture 'phi3' is not mapped",
             capsys)  # fmt: skip


def test_a_truncated_file_is_refused_in_one_line(demo_files, tmp_path, capsys):
    whole = demo_files["tpp20-Q4_0"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 1000])
    _refused(tmp_path, [{"artifact": str(cut)}], [str(DEMO / "tpp20")], "not a readable GGUF file", capsys)


def test_pickle_files_and_pickle_only_packs_are_never_read(tmp_path, capsys):
    pickled = tmp_path / "model.bin"
    pickled.write_bytes(b"\x80\x04")
    _refused(tmp_path, [{"artifact": str(pickled)}], [str(DEMO / "tpp20")], "pickle", capsys)
    pack = tmp_path / "pack"
    pack.mkdir()
    config = json.loads((DEMO / "tpp20" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True}
    (pack / "config.json").write_text(json.dumps(config))
    (pack / "pytorch_model.bin").write_bytes(b"\x80\x04")
    _refused(tmp_path, [{"artifact": str(pack)}], [str(DEMO / "tpp20")], "pytorch_model.bin: pickle", capsys)


@pytest.mark.parametrize(
    ("quant", "message"),
    [
        ([{"method": "rtn", "format": "gguf", "bits": 4}], "format gguf is read from files only"),
        ([{"method": "artifact", "bits": 4}], "method artifact reads a quantized file"),
        ([{"artifact": "no/such/file.gguf"}], "no such local file; on the hub: no/such: revision .main. is not in"),
        ([{"artifact": "nowhere.gguf"}], "no such file or directory, nor a hub reference"),
    ],
)
def test_what_only_a_file_can_say_is_refused_in_a_grid(tmp_path, quant, message):
    with pytest.raises(StudyError, match=message):
        load_study(_study(tmp_path, quant, [str(DEMO / "tpp20")]))


def test_one_file_for_a_ladder_of_several_asks_for_a_mapping(demo_files, tmp_path, capsys):
    ladder = [str(DEMO / "tpp20"), str(DEMO / "tpp320")]
    _refused(tmp_path, [{"artifact": str(demo_files["tpp20-Q4_0"])}], ladder, "give a mapping", capsys)


def test_a_gptq_export_reads_back_as_its_simulation_with_float16_scales(tmp_path):
    """The pack stores float16 scales; GPTQ with scale_dtype: float16 fits its grids on them, so the file holds
    exactly the simulated weights (the float32-scale simulation differs by the scales' rounding)."""
    from ptq_eval.export import export_gptq
    from ptq_eval.quant.calibration import calibration_tokens

    calibration = {"corpus": "stdlib-python", "split": "train", "samples": 8, "seq_len": 64, "seed": 0}
    export_gptq(str(DEMO / "tpp20"), tmp_path / "pack", QuantConfig(method="gptq", bits=4, group_size=32), calibration)
    artifact = describe(str(tmp_path / "pack"))
    assert (artifact.artifact_type, artifact.bits, artifact.group_size, artifact.format) == ("gptq", 4, 32, "int")
    # per [out, in] matrix: 4-bit codes, a float16 scale and a 4-bit zero per 32 weights, an int32 g_idx per column
    shapes = [(96, 32), (32, 32), (128, 32), (32, 128)] * 2
    stored_bits = sum(o * i * 4 + i // 32 * o * (16 + 4) + i * 32 for o, i in shapes)
    assert artifact.bits_per_weight == pytest.approx(stored_bits / sum(o * i for o, i in shapes))
    model, tokenizer = _load(DEMO / "tpp20")
    check_base(artifact, str(DEMO / "tpp20"), tokenizer)
    stored = stored_weights(artifact, model)
    tokens = calibration_tokens(tokenizer, "stdlib-python", "train", 8, 64, 0)
    config = QuantConfig(method="gptq", bits=4, group_size=32, options={"scale_dtype": "float16"})
    quantize(model, config, calibration=tokens)
    assert len(stored.quantized) == 8
    for name, parameter in model.named_parameters():
        if name in stored.quantized:
            assert torch.equal(stored.tensors[name], parameter.detach()), name


@pytest.mark.parametrize(("budget", "code", "decision"), [(0.05, 0, "PASS"), (1e-5, 1, "FAIL")])
def test_the_gate_judges_the_shipped_file_and_names_it(demo_files, tmp_path, capsys, budget, code, decision):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "name": "release", "quant": [{"method": "rtn", "bits": 8}], "evals": [EVAL],
        "budgets": [{"kind": "absolute", "max": budget, "metric": "loss"}],
    }))  # fmt: skip
    path = str(demo_files["tpp20-Q4_0"])
    arguments = ["gate", str(DEMO / "tpp20"), "--artifact", path, "--policy", str(policy)]
    out = tmp_path / "verdict.json"
    assert main([*arguments, "--store", str(tmp_path / "gate.sqlite"), "--out", str(out)]) == code
    markdown = capsys.readouterr().out
    assert f"{decision} — `tpp20` as `{path} (gguf Q4_0: Q4_0×8; 4.5 bits/weight)`" in markdown
    verdict = json.loads(out.read_text())
    assert [(c["method"], c["format"], c["bits"]) for c in verdict["checks"]] == [("artifact", "q4_0", 4)]
    assert verdict["artifact"].startswith(path)


def test_a_baseline_budget_has_nothing_to_compare_a_file_with(demo_files, tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "name": "release", "quant": [{"method": "rtn", "bits": 8}], "evals": [EVAL],
        "budgets": [{"kind": "baseline", "max": 0.01, "checkpoint": str(DEMO / "tpp320")}],
    }))  # fmt: skip
    arguments = ["gate", str(DEMO / "tpp20"), "--artifact", str(demo_files["tpp20-Q4_0"]), "--policy", str(policy)]
    assert main([*arguments, "--store", str(tmp_path / "gate.sqlite")]) == EXIT_INPUT
    assert "belongs to one base" in capsys.readouterr().err


def test_a_compressed_tensors_checkpoint_reads_back_as_its_simulation(tmp_path):
    pytest.importorskip("compressed_tensors")
    from compressed_writing import write_compressed

    model, tokenizer = _load(DEMO / "tpp20")
    write_compressed(model, tokenizer, tmp_path / "w4g32")
    artifact = describe(str(tmp_path / "w4g32"))
    assert (artifact.artifact_type, artifact.quantized_as, artifact.format) == (
        "compressed-tensors",
        "pack-quantized",
        "int",
    )
    assert (artifact.bits, artifact.group_size, artifact.symmetric) == (4, 32, True)
    assert artifact.bits_per_weight == 4 + 32 / 32  # a float32 scale per 32 weights (zero points not stored)
    base, tokenizer = _load(DEMO / "tpp20")
    check_base(artifact, str(DEMO / "tpp20"), tokenizer)
    stored = stored_weights(artifact, base)
    assert len(stored.quantized) == 8
    for name, parameter in base.named_parameters():
        expected = parameter.detach()
        if name in stored.quantized:
            expected = quantize_tensor(expected, 4, 32, True, "int")
        assert torch.equal(stored.tensors[name], expected), name


def test_an_asymmetric_compressed_tensors_checkpoint_reads_back_as_the_asymmetric_grid(tmp_path):
    """Zero points stored beside the scales: the same points as ptq-eval's asymmetric integer grid."""
    pytest.importorskip("compressed_tensors")
    from compressed_writing import write_compressed

    model, tokenizer = _load(DEMO / "tpp20")
    write_compressed(model, tokenizer, tmp_path / "asym", bits=4, group_size=32, symmetric=False)
    artifact = describe(str(tmp_path / "asym"))
    assert not artifact.symmetric and artifact.bits_per_weight > 4 + 32 / 32  # zero points stored too
    base, _ = _load(DEMO / "tpp20")
    stored = stored_weights(artifact, base)
    for name, parameter in base.named_parameters():
        if name in stored.quantized:
            assert torch.equal(stored.tensors[name], quantize_tensor(parameter.detach(), 4, 32, False, "int")), name


def _with_input_activations(path: Path, arguments: dict) -> Path:
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"] = arguments
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_a_w8a8_compressed_checkpoint_is_measured_with_its_dynamic_activations_as_its_simulation(tmp_path, capsys):
    """llm-compressor's W8A8 (int8 activations, a dynamic scale per token): the file's weights and the activations
    its kernels round, equal to the simulated config, number for number."""
    pytest.importorskip("compressed_tensors")
    from compressed_writing import write_compressed

    model, tokenizer = _load(DEMO / "tpp20")
    path = write_compressed(model, tokenizer, tmp_path / "w8a8", bits=8)
    _with_input_activations(path, {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True,
                                   "symmetric": True})  # fmt: skip
    capsys.readouterr()  # the writer's progress
    simulated = {"method": "rtn", "bits": 8, "group_size": 32, "activations": "int8"}
    study = _study(tmp_path, [simulated, {"artifact": str(path)}, {"method": "rtn", "bits": 8, "group_size": 32}],
                   [str(DEMO / "tpp20")])  # fmt: skip
    store = tmp_path / "store.sqlite"
    assert main(["run", str(study), "--store", str(store)]) == 0
    results = study_results(load_study(study), Store(store))
    loss = results[results.metric == "loss"]
    simulation, real = loss[(loss.method == "rtn") & (loss.activations != "")], loss[loss.method == "artifact"]
    weights_alone = loss[(loss.method == "rtn") & (loss.activations == "")]
    assert real.quant_value.item() == simulation.quant_value.item() != weights_alone.quant_value.item()
    assert real.activations.item() == "int token" and real.activation_bits.item() == 8


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_bits": 8, "type": "int", "strategy": "tensor", "dynamic": False}, "static scales stored in the file"),
        ({"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": True}, "accepted: int or fp8"),
    ],
)
def test_a_compressed_checkpoint_with_activations_it_cannot_simulate_is_refused_by_name(
    tmp_path, capsys, arguments, message
):
    pytest.importorskip("compressed_tensors")
    from compressed_writing import write_compressed

    model, tokenizer = _load(DEMO / "tpp20")
    path = _with_input_activations(write_compressed(model, tokenizer, tmp_path / "w8a8", bits=8), arguments)
    capsys.readouterr()  # the writer's progress
    _refused(tmp_path, [{"artifact": str(path)}], [str(DEMO / "tpp20")], message, capsys)


def test_the_shipped_file_policy_passes_the_demo_q4_0_file(demo_files, tmp_path, capsys):
    """tasks/release-policy-file.yaml on the most over-trained n25k checkpoint's Q4_0 file, as the README shows."""
    policy = DEMO.parent.parent.parent / "release-policy-file.yaml"
    arguments = ["gate", str(DEMO / "tpp320"), "--artifact", str(demo_files["tpp320-Q4_0"]), "--policy", str(policy)]
    assert main([*arguments, "--store", str(tmp_path / "gate.sqlite"), "--out", str(tmp_path / "v.json")]) == 0
    assert "PASS — `tpp320` as `" in capsys.readouterr().out


def _hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> str:
    """A hub cache entry for `repo` at main holding `files` (name → local file or directory); its commit."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (shutil.copytree if source.is_dir() else shutil.copy)(source, snapshot / name)
    return commit


def test_hub_artifacts_are_read_at_their_commit_from_the_cache(demo_files, tmp_path, monkeypatch):
    """org/name/FILE.gguf@main and org/name@main (a GPTQ pack), offline from the cache: described like local files,
    identified by their commit; a repository holding no such file is one clear error."""
    import huggingface_hub

    from ptq_eval.artifacts import artifact_digest
    from ptq_eval.export import export_gptq

    export_gptq(str(DEMO / "tpp20"), tmp_path / "pack", QuantConfig(method="gptq", bits=4, group_size=32),
                {"corpus": "stdlib-python", "split": "train", "samples": 8, "seq_len": 64, "seed": 0})  # fmt: skip
    cache = tmp_path / "hub"
    gguf_commit = _hub_cache(cache, "org/demo-GGUF", {"demo-Q4_0.gguf": demo_files["tpp20-Q4_0"]})
    pack = tmp_path / "pack"
    pack_commit = _hub_cache(cache, "org/demo-GPTQ", {p.name: p for p in pack.iterdir()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    local = describe(str(demo_files["tpp20-Q4_0"]))
    hub = describe("org/demo-GGUF/demo-Q4_0.gguf@main")
    assert (hub.quantized_as, hub.bits_per_weight, hub.types) == (
        local.quantized_as,
        local.bits_per_weight,
        local.types,
    )
    assert hub.commit == gguf_commit and artifact_digest(hub) == f"git:{gguf_commit}:demo-Q4_0.gguf"
    packed = describe("org/demo-GPTQ@main")
    assert (packed.artifact_type, packed.commit) == ("gptq", pack_commit)
    model, tokenizer = _load(DEMO / "tpp20")
    check_base(packed, str(DEMO / "tpp20"), tokenizer)
    assert len(stored_weights(packed, model).quantized) == 8
    with pytest.raises(ArtifactError, match="no such local file; on the hub: .*Q8_0.gguf not found"):
        describe("org/demo-GGUF/demo-Q8_0.gguf@main")


def test_the_python_api_pairs_a_file_with_a_model_held_in_memory(demo_files):
    import ptq_eval

    model, tokenizer = _load(DEMO / "tpp20")
    quant = [{"method": "rtn", "format": "q4_0"}, {"artifact": str(demo_files["tpp20-Q4_0"])}]
    results = ptq_eval.evaluate(model, tokenizer, quant=quant, evals=[EVAL])
    loss = results[results.metric == "loss"].set_index("method")
    assert loss.loc["artifact"].delta == loss.loc["rtn"].delta and loss.loc["artifact"].quantized_as == "Q4_0"


def test_a_file_that_quantizes_the_embeddings_is_measured_so_and_leaves_the_next_config_pristine(tmp_path):
    """llama.cpp's default quantizes token_embd too: the file's job uses its embeddings and says so; the config
    scored after it on the same loaded checkpoint (quant entries run in their order) sees the checkpoint's own
    embeddings again."""
    model, tokenizer = _load(DEMO / "tpp20")
    everything = write_gguf(model, tokenizer, tmp_path / "all-q8.gguf", "Q8_0", quantize_embeddings=True)
    ladder = [str(DEMO / "tpp20")]
    simulated = {"method": "rtn", "format": "q8_0"}
    both = _study(tmp_path, [{"artifact": str(everything)}, simulated], ladder, "both")
    alone = _study(tmp_path, [simulated], ladder, "alone")
    assert [job.quant.method for job in expand_jobs(load_study(both))] == ["artifact", "rtn"]
    for study in (both, alone):
        assert main(["run", str(study), "--store", str(tmp_path / f"{study.stem}.sqlite")]) == 0
    with Store(tmp_path / "both.sqlite") as store:
        loss = study_results(load_study(both), store).query("metric == 'loss'").set_index("method")
        jobs = store.frame().query("metric == 'loss'").set_index("method")
    with Store(tmp_path / "alone.sqlite") as store:
        reference = study_results(load_study(alone), store).query("metric == 'loss'")
    assert loss.loc["rtn"].quant_value == reference.quant_value.iloc[0]
    assert loss.loc["artifact"].quant_value != loss.loc["rtn"].quant_value  # its embeddings are Q8_0 too
    warnings = json.loads(jobs.loc["artifact"].provenance)["quant_report"]["warnings"]
    assert any("gpt_neox.embed_in.weight (Q8_0)" in warning for warning in warnings)
