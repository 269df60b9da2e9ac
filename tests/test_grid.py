import pytest
import torch

from ptq_eval.errors import UserError
from ptq_eval.quant.formats import quantize_tensor
from ptq_eval.quant.grid import fit_grid


def weights(rows=8, columns=64, seed=0, dtype=torch.float32):
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("symmetric", [True, False])
def test_16_bits_round_trips_within_float32_precision(symmetric):
    w = weights()
    q = quantize_tensor(w, 16, -1, symmetric)
    assert q.dtype == torch.float32
    scale = w.abs().amax(dim=1, keepdim=True)
    assert torch.all((q - w).abs() <= scale * (2 * torch.finfo(torch.float32).eps + 2 / 65535))


TOO_WIDE = [(torch.bfloat16, 10, True), (torch.bfloat16, 9, False), (torch.float16, 13, True),
            (torch.float16, 16, False)]  # fmt: skip


@pytest.mark.parametrize(("dtype", "bits", "symmetric"), TOO_WIDE)
def test_widths_whose_levels_do_not_fit_a_half_dtype_are_refused(dtype, bits, symmetric):
    with pytest.raises(UserError, match=f"bits={bits} .* cannot be held exactly in .*use at most"):
        quantize_tensor(weights(dtype=dtype), bits, -1, symmetric)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_half_precision_grids_hold_every_level_exactly(dtype, symmetric, bits):
    """Every point s·(q − zero) of the grid is a value of the dtype, so no rounding follows the grid's."""
    w = weights(rows=64, columns=256, dtype=dtype) * 0.05
    w[:8] *= 1e-4  # rows whose levels fall among the dtype's subnormals (float16 below 6.1e-5)
    grid = fit_grid(w, bits, symmetric, dtype)
    points = grid.scale * (torch.arange(2**bits, dtype=torch.float32) - grid.zero)
    assert torch.equal(points.to(dtype).float(), points)
    quantized = quantize_tensor(w, bits, 32, symmetric)
    assert quantized.dtype == dtype
    float_grid = quantize_tensor(w.float(), bits, 32, symmetric)  # the same grid rule, without the exactness
    assert (quantized.float() - w.float()).norm() <= 2.5 * (float_grid - w.float()).norm()


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_scales_are_correctly_rounded_quotients(bits):
    """The scale is (high − low) / maxq rounded once, as IEEE division gives it on every device (a reciprocal
    multiply, which CUDA uses for a Python-number divisor, is one ulp off for some rows)."""
    w = weights(rows=4096, columns=32, seed=3)
    grid = fit_grid(w, bits, symmetric=True)
    span = 2 * w.abs().amax(dim=1, keepdim=True)
    assert torch.equal(grid.scale, (span.double() / (2**bits - 1)).float())


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("group_size", [-1, 0, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_levels_per_group_at_most_two_to_the_bits(bits, group_size, symmetric):
    w = weights()
    q = quantize_tensor(w, bits, group_size, symmetric)
    if group_size == 0:
        groups = [q.flatten()]
    elif group_size == -1:
        groups = list(q)
    else:
        groups = list(q.reshape(-1, group_size))
    assert max(len(torch.unique(g)) for g in groups) <= 2**bits
    assert not torch.equal(q, w)


@pytest.mark.parametrize("group_size", [-1, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_falls_as_bits_rise(group_size, symmetric):
    w = weights(rows=32, columns=128)
    errors = [(quantize_tensor(w, bits, group_size, symmetric) - w).pow(2).sum().item() for bits in range(2, 9)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))


def test_groups_beat_channels_beat_tensor():
    w = weights(rows=32, columns=128) * torch.linspace(0.1, 3, 32)[:, None]
    error = {g: (quantize_tensor(w, 3, g) - w).pow(2).sum().item() for g in (0, -1, 16)}
    assert error[16] < error[-1] < error[0]


def test_a_group_size_that_does_not_divide_leaves_a_shorter_last_group():
    w = weights(columns=48)
    q = quantize_tensor(w, 3, 32)
    assert torch.equal(q[:, :32], quantize_tensor(w[:, :32], 3, 32))
    assert torch.equal(q[:, 32:], quantize_tensor(w[:, 32:], 3, -1))
    assert max(len(torch.unique(row)) for row in q[:, 32:]) <= 8


def test_a_group_wider_than_the_matrix_is_its_whole_row_in_rtn_and_gptq():
    from ptq_eval.quant import QuantConfig
    from ptq_eval.quant.gptq_solve import gptq_weight

    w = weights(columns=16)
    assert torch.equal(quantize_tensor(w, 3, 32), quantize_tensor(w, 3, -1))
    hessian = torch.eye(16)  # uncorrelated inputs: GPTQ's updates vanish and it rounds as RTN does
    assert torch.allclose(
        gptq_weight(w, hessian, QuantConfig(method="gptq", bits=3, group_size=32)).weight, quantize_tensor(w, 3, -1)
    )
    config = QuantConfig(method="gptq", bits=3, group_size=32)
    assert torch.allclose(
        gptq_weight(weights(columns=48), torch.eye(48), config).weight, quantize_tensor(weights(columns=48), 3, 32)
    )


def test_negative_group_sizes_other_than_minus_one_are_errors():
    with pytest.raises(ValueError, match=r"group_size=-2 is not accepted"):
        quantize_tensor(weights(), 4, -2)


@pytest.mark.parametrize("bits", [1, 17])
def test_bits_out_of_range_is_an_error(bits):
    with pytest.raises(ValueError, match=rf"bits={bits} is not in 2..16"):
        quantize_tensor(weights(), bits)


def test_asymmetric_grid_represents_zero_and_range_exactly():
    w = torch.tensor([[0.0, 1.0, 3.0, 7.5]])
    grid = fit_grid(w, 4, symmetric=False)
    assert grid.fake_quantize(w).tolist() == [[0.0, 1.0, 3.0, 7.5]]


def test_all_zero_rows_stay_zero():
    w = torch.zeros(3, 8)
    for symmetric in (True, False):
        assert torch.equal(quantize_tensor(w, 3, -1, symmetric), w)
