"""The options every simulating method shares: the rotation of each matrix's inputs (`quant/rotation.py`) and
the dtype an integer grid's scales are stored in. Both enter a job's key only off their defaults."""

from __future__ import annotations

from typing import Literal

from ptq_eval.quant.formats import SCALE_DTYPES
from ptq_eval.quant.rotation import RotationOptions


class SharedOptions(RotationOptions):
    """`scale_dtype`: float32 keeps each group's scale as computed; float16 (GPTQ and AWQ packs) or bfloat16 (as
    a compressed-tensors checkpoint of a bfloat16 model stores them) rounds it first, so the simulation holds the
    weights the packed checkpoint does (`ptq-eval export` stores float16 scales). Integer grids only."""

    scale_dtype: Literal[SCALE_DTYPES] = "float32"


SHARED_OPTIONS = tuple(SharedOptions.model_fields)
