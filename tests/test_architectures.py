"""Every weight of every architecture: tiny random models of many causal-LM families through RTN and GPTQ.

For each family: every weight matrix changes unless a documented default keeps it (embeddings, the output
head, MoE routers), the recorded coverage agrees with what changed, the block-by-block Hessians equal those
of one plain forward pass (calibration longer than the sliding windows), and GPTQ's output error on the
calibration inputs is at most RTN's.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

from ptq_eval.quant import QuantConfig, QuantError, quantize, survey
from ptq_eval.quant.base import ROUTER_REASON
from ptq_eval.quant.blocks import calibrate, transformer_blocks
from ptq_eval.quant.statistics import eager_experts, statistics_of

VOCAB, SEQ_LEN, WINDOW, LAYERS = 96, 16, 4, 3  # three blocks: the middle one is fed what the first hands on
COMMON = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=40,
    max_position_embeddings=64,
)  # fmt: skip
ATTENTION = dict(COMMON, num_key_value_heads=2)
MOE = dict(ATTENTION, num_experts_per_tok=2)
CONFIGS = {
    "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64),
    "gpt_neox": lambda: T.GPTNeoXConfig(**COMMON),
    "llama": lambda: T.LlamaConfig(**ATTENTION),
    "llama_tied": lambda: T.LlamaConfig(**ATTENTION, tie_word_embeddings=True),
    "opt": lambda: T.OPTConfig(**{**COMMON, "intermediate_size": None}, ffn_dim=40, word_embed_proj_dim=16),
    "qwen2": lambda: T.Qwen2Config(**ATTENTION, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "olmo2": lambda: T.Olmo2Config(**ATTENTION),
    "gemma2": lambda: T.Gemma2Config(**ATTENTION, head_dim=8, sliding_window=WINDOW),
    "gemma3": lambda: T.Gemma3TextConfig(
        **ATTENTION,
        head_dim=8,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
    "mistral": lambda: T.MistralConfig(**ATTENTION, sliding_window=WINDOW),
    "phi": lambda: T.PhiConfig(**COMMON),
    "phi3_fused_qkv": lambda: T.Phi3Config(**ATTENTION, pad_token_id=0),
    "falcon": lambda: T.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4),
    "bloom": lambda: T.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=LAYERS, n_head=4),
    "gptj": lambda: T.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, rotary_dim=4, n_positions=64),
    "mixtral": lambda: T.MixtralConfig(**MOE, num_local_experts=4),
    "olmoe": lambda: T.OlmoeConfig(**MOE, num_experts=4),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(
        **MOE, num_experts=4, moe_intermediate_size=24, shared_expert_intermediate_size=40
    ),
    "gpt_oss_transposed_experts": lambda: T.GptOssConfig(
        **{**MOE, "num_attention_heads": 4},
        num_local_experts=4,
        head_dim=8,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
}
MOE_FAMILIES = {"mixtral", "olmoe", "qwen2_moe", "gpt_oss_transposed_experts"}
DEFAULT_REASONS = {"embedding", "output head", ROUTER_REASON}


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[family]()
    for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if (getattr(config, token, None) or 0) >= VOCAB:
            setattr(config, token, 0)
    return T.AutoModelForCausalLM.from_config(config).eval()


def calibration(samples: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (samples, SEQ_LEN), generator=torch.Generator().manual_seed(1))


def weight_slices(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every matrix of the model, an expert of a 3-D tensor counted as a matrix of its own."""
    slices = {}
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):  # fused experts keep their biases as [experts, out]
            continue
        if parameter.ndim == 2:
            slices[name] = parameter.detach().clone()
        elif parameter.ndim == 3:
            slices.update({f"{name}[{e}]": parameter[e].detach().clone() for e in range(parameter.shape[0])})
    return slices


def assert_every_weight_quantized(family: str, model: torch.nn.Module, before: dict, report) -> None:
    after = weight_slices(model)
    changed = {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}
    unchanged = set(before) - changed
    coverage = report.coverage
    kept = {name for name in unchanged if name in coverage.defaults}
    assert unchanged == kept, f"unchanged without a documented default: {sorted(unchanged - kept)}"
    assert set(coverage.defaults.values()) <= DEFAULT_REASONS
    assert (ROUTER_REASON in coverage.defaults.values()) == (family in MOE_FAMILIES)
    assert coverage.left_out == {} and coverage.left_out_params == 0 and coverage.excluded == ()
    assert coverage.matrices == len(changed) == len(report.layers)
    assert coverage.params == sum(before[name].numel() for name in changed)
    assert 0.9 < coverage.fraction < 1  # the rest: norms and biases


@pytest.mark.parametrize("family", list(CONFIGS))
def test_rtn_quantizes_every_weight_and_records_it(family):
    model = build(family)
    before = weight_slices(model)
    report = quantize(model, QuantConfig(method="rtn", bits=3, group_size=-1))
    assert_every_weight_quantized(family, model, before, report)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gptq_quantizes_every_weight_with_less_output_error_than_rtn(family):
    model = build(family)
    before = weight_slices(model)
    report = quantize(model, QuantConfig(method="gptq", bits=3, group_size=-1), calibration=calibration())
    assert_every_weight_quantized(family, model, before, report)
    assert all(layer.fallback is None and layer.samples > 0 for layer in report.layers)
    for layer in report.layers:
        assert layer.output_error <= layer.rtn_output_error * (1 + 1e-6), layer.name


@pytest.mark.parametrize("family", list(CONFIGS))
def test_block_by_block_hessians_equal_one_full_forward(family):
    """Each block is fed what it really receives (its own masks and rotary tables), not block 0's."""
    model = build(family)
    weights = survey(model).selected
    tokens = calibration()
    propagated = {}
    calibrate(model, weights, tokens, lambda group, hessians: propagated.update(hessians), batch_size=8)
    with torch.no_grad(), eager_experts(model), statistics_of(weights) as direct:
        for batch in tokens.split(8):
            model(input_ids=batch, use_cache=False)
    assert set(propagated) == {weight.name for weight in weights}
    for name, hessian in propagated.items():
        assert hessian.samples == direct[name].samples > 0, name
        torch.testing.assert_close(hessian.matrix, direct[name].matrix, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", ["llama", "mixtral", "gpt2", "opt"])
def test_layer_sequential_gptq_quantizes_everything(family):
    model = build(family)
    before = weight_slices(model)
    report = quantize(
        model,
        QuantConfig(method="gptq", bits=4, group_size=-1, options={"sequential": "layer"}),
        calibration=calibration(),
    )
    assert_every_weight_quantized(family, model, before, report)


@pytest.mark.parametrize("sequential", ["block", "layer"])
def test_an_expert_no_token_reaches_falls_back_to_rtn_and_says_so(sequential):
    model = build("mixtral")
    for layer in model.model.layers:
        router = layer.mlp.gate
        original = router.forward
        router.forward = lambda states, original=original: (lambda out: (out[0], out[1], out[2] % 2))(original(states))
    before = weight_slices(model)
    report = quantize(
        model,
        QuantConfig(method="gptq", bits=4, group_size=-1, options={"sequential": sequential}),
        calibration=calibration(),
    )
    assert_every_weight_quantized("mixtral", model, before, report)
    fallen = {layer.name for layer in report.layers if layer.fallback}
    experts = {layer.name for layer in report.layers if "experts" in layer.name}
    assert fallen == {name for name in experts if name.endswith(("[2]", "[3]"))}
    assert all("sent it no calibration token" in layer.fallback for layer in report.layers if layer.fallback)


def test_a_linear_gptq_cannot_see_the_inputs_of_is_an_error_not_a_rounding():
    model = build("llama")
    mlp = model.model.layers[1].mlp  # its down projection applied without calling the module (no hook sees it)
    mlp.forward = lambda x: torch.nn.functional.linear(
        mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), mlp.down_proj.weight
    )
    with pytest.raises(QuantError, match=r"no calibration input reach model.layers.1.mlp.down_proj"):
        quantize(model, QuantConfig(method="gptq", bits=4, group_size=-1), calibration=calibration())


def test_convolutions_are_never_taken_for_experts_nor_their_neighbours_for_routers():
    config = T.MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2)
    found = survey(T.AutoModelForCausalLM.from_config(config))
    assert ROUTER_REASON not in found.defaults.values()
    assert "backbone.layers.0.mixer.in_proj" in {weight.name for weight in found.selected}
    assert found.left_out["backbone.layers.0.mixer.conv1d.weight"].startswith("not a Linear, Conv1D or fused expert")


def test_a_config_that_selects_nothing_is_an_error_naming_the_model():
    model = build("gpt2")
    with pytest.raises(QuantError, match=r"GPT2LMHeadModel: the quant config selects no weight matrix"):
        quantize(model, QuantConfig(method="rtn", bits=4), exclude=("*attn*", "*mlp*"))


def test_unknown_weight_types_are_left_out_by_name():
    """A 2-D parameter the suite cannot read as a matrix is reported, not silently skipped."""
    model = build("llama")
    model.model.layers[0].mlp.register_parameter("odd", torch.nn.Parameter(torch.ones(4, 4)))
    found = survey(model)
    assert found.left_out == {"model.layers.0.mlp.odd": "not a Linear, Conv1D or fused expert tensor (LlamaMLP)"}
    assert found.left_out_params == 16


class ToyBlock(torch.nn.Module):
    """A block whose experts are a ModuleList of Linears (as remote-code MoEs keep them), more of them than
    there are blocks; the router sends each token to one expert."""

    def __init__(self, width: int = 8, experts: int = 4):
        super().__init__()
        self.gate = torch.nn.Linear(width, experts, bias=False)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(experts))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        chosen = self.gate(hidden).argmax(-1)
        out = hidden.clone()
        for index, expert in enumerate(self.experts):
            mask = chosen == index
            if mask.any():
                out[mask] = out[mask] + expert(hidden[mask])
        return out


class ToyModel(torch.nn.Module):
    def __init__(self, rescale_between_blocks: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.layers = torch.nn.ModuleList(ToyBlock() for _ in range(3))
        self.rescale = rescale_between_blocks

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        hidden = self.embed(input_ids)
        for layer in self.layers:
            hidden = layer(hidden)
            if self.rescale:
                hidden = hidden * 2.0
        return hidden


def test_experts_kept_as_a_module_list_are_calibrated_per_block_not_taken_for_the_stack():
    model = ToyModel()
    weights = survey(model).selected
    assert transformer_blocks(model, weights) is model.layers  # not a block's longer list of 4 experts
    assert set(survey(model).defaults.values()) == {"embedding", ROUTER_REASON}
    propagated = {}
    calibrate(model, weights, calibration(), lambda group, hessians: propagated.update(hessians))
    with torch.no_grad(), statistics_of(weights) as direct:
        for batch in calibration().split(8):
            model(batch)
    for name, hessian in propagated.items():
        assert hessian.samples == direct[name].samples, name
        if hessian.samples:
            torch.testing.assert_close(hessian.matrix, direct[name].matrix, msg=name)
    report = quantize(
        model,
        QuantConfig(method="gptq", bits=4, group_size=-1, options={"sequential": "layer"}),
        calibration=calibration(),
    )
    assert len(report.layers) == 12 and all(layer.fallback or layer.samples for layer in report.layers)


def test_a_model_that_changes_hidden_states_between_blocks_is_refused_not_miscalibrated():
    with pytest.raises(QuantError, match=r"ToyModel changes the hidden states between blocks 0 and 1"):
        quantize(
            ToyModel(rescale_between_blocks=True),
            QuantConfig(method="gptq", bits=4, group_size=-1),
            calibration=calibration(),
        )
