"""Benchmark (`make bench-formats`): our number formats beside torchao's reference quantizers, value for value.

Runs in a throwaway venv that holds torchao (never a project dependency). The same float32 tensors go through
both: random Gaussian and heavy-tailed (Student-t, 3 degrees of freedom) matrices, and the weight matrices of
a real trained model (`models/stories260K-hf` under --data-dir, when present). Compared after de-quantizing
to float32:

- `mxfp4`: torchao `to_mx(x, float4_e2m1fn_x2, 32, FLOOR)` then `to_dtype(..., float32)` (OCP MX v1.0's shared
  exponent, ⌊log2 amax⌋ − 2).
- `nvfp4`: torchao `NVFP4Tensor.to_nvfp4(x, 16, per_tensor_scale=amax / (448 · 6))` then `dequantize`.
- the elements alone, on the same scaled values x / s: e2m1 against torchao's `f32_to_f4_unpacked`; e4m3 and
  e5m2 against torch's own saturating float8 casts.

MXINT8 has no reference here: torchao 0.18 lists it as future work. Each row counts the values that differ
and the largest difference; where they differ the table says why (the rule each side follows).
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, f32_to_f4_unpacked
from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

from ptq_eval.quant.formats import E2M1, E4M3, E5M2, quantize_tensor

ROWS, COLUMNS = 512, 2048


def random_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(ROWS, COLUMNS, generator=generator) * 0.02
    normal = torch.randn(ROWS, COLUMNS, generator=generator)
    chi = torch.randn(3, ROWS, COLUMNS, generator=generator).pow(2).sum(0) / 3
    heavy = normal / chi.sqrt() * 0.02  # Student-t with 3 degrees of freedom
    return {"gaussian": gaussian, "student-t(3)": heavy}


def model_tensors(data_dir: Path | None) -> dict[str, torch.Tensor]:
    path = data_dir / "models" / "stories260K-hf" / "model.safetensors" if data_dir else None
    if path is None or not path.is_file():
        return {}
    weights = load_file(path)
    matrices = [t.float() for name, t in sorted(weights.items()) if t.ndim == 2 and t.shape[1] % 32 == 0]
    return {"stories260K (all matrices)": torch.cat([m.flatten() for m in matrices]).reshape(-1, 32)}


def torchao_mxfp4(x: torch.Tensor) -> torch.Tensor:
    scale, data = to_mx(x, torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR)
    return to_dtype(data, scale, torch.float4_e2m1fn_x2, 32, torch.float32).reshape(x.shape)


def torchao_nvfp4(x: torch.Tensor) -> torch.Tensor:
    scale = per_tensor_amax_to_scale(x.abs().amax())
    return NVFP4Tensor.to_nvfp4(x, 16, per_tensor_scale=scale).dequantize(torch.float32)


def torchao_e2m1(x: torch.Tensor) -> torch.Tensor:
    return f4_unpacked_to_f32(f32_to_f4_unpacked(x))


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[int, float]:
    differ = ours != theirs
    return int(differ.sum()), float((ours - theirs).abs().max())


def scaled(x: torch.Tensor, largest: float) -> torch.Tensor:
    """x over a per-row scale that puts each row's largest |x| on `largest` (the elements' inputs)."""
    return x / (x.abs().amax(dim=1, keepdim=True) / largest)


def rows_for(name: str, x: torch.Tensor) -> list[list[str]]:
    rows = []
    for label, ours, theirs in [
        ("mxfp4", quantize_tensor(x, 4, 32, True, "mxfp4"), torchao_mxfp4(x)),
        ("nvfp4", quantize_tensor(x, 4, 16, True, "nvfp4"), torchao_nvfp4(x)),
        ("e2m1 elements", E2M1.round(scaled(x, 6.0)), torchao_e2m1(scaled(x, 6.0))),
        ("e4m3 elements", E4M3.round(scaled(x, 448.0)), scaled(x, 448.0).to(torch.float8_e4m3fn).float()),
        ("e5m2 elements", E5M2.round(scaled(x, 57344.0)), scaled(x, 57344.0).to(torch.float8_e5m2).float()),
    ]:
        differ, largest = compare(ours, theirs)
        rows.append([name, label, f"{x.numel():,}", f"{differ:,}", f"{differ / x.numel():.2e}", f"{largest:.3g}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="holds models/stories260K-hf (optional)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/formats.md"))
    args = parser.parse_args()
    tensors = random_tensors() | model_tensors(args.data_dir)
    rows = [row for name, x in tensors.items() for row in rows_for(name, x)]
    header = ["tensor", "format", "values", "values that differ", "fraction", "largest |difference|"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    machine = f"{date.today()}, {platform.machine()}, torch {torch.__version__}"
    text = f"""# Number formats: ours beside torchao {version("torchao")} ({machine})

float32 tensors ({ROWS} × {COLUMNS} random matrices; the real model's matrices as rows of 32), quantized and
de-quantized by `ptq_eval.quant.formats` and by the reference; every value compared.
`tests/bench/formats_reference.py` (`make bench-formats`).

{table}

Where NVFP4 differs, the value divided by its scale lies exactly on an e2m1 tie (±2.5 in both random
matrices, checked by hand): ours divides once by the scale the value is stored with (s_block · s_tensor) and
rounds the tie to even (to 2); torchao multiplies by a reciprocal, x · ((1 / s_tensor) / s_block), whose
extra roundings give 2.5000002, which rounds to 3. Neither NVIDIA's
description of the format nor torchao fixes this order; ours is the rule every format here follows. Block
scales below e4m3's smallest normal (2^-6) are raised to it, as torchao does; compressed-tensors keeps e4m3's
subnormals and gives an all-zero block the scale 0.125, so it can differ on blocks ~30,000× smaller than the
matrix's largest weight. MXINT8 has no reference here (torchao 0.18 lists it as future work); its rule (OCP MX
v1.0: k/64 on 2^⌊log2 amax⌋, k saturating at −128..127) is held by `tests/test_formats.py`.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
