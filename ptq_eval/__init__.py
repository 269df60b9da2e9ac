"""ptq-eval: measure how post-training quantization damage grows with training tokens per parameter.

`ptq_eval.evaluate(...)` and `ptq_eval.load_results(...)` are the Python API (`api.py`); they are imported on
first use, so the command line and the other modules do not pay for the runner's imports."""

from ptq_eval.version import __version__

__all__ = ["__version__", "evaluate", "load_results"]


def __getattr__(name: str):
    if name in ("evaluate", "load_results"):
        from ptq_eval import api

        return getattr(api, name)
    raise AttributeError(f"module 'ptq_eval' has no attribute {name!r}")
