"""ptq-eval: measure how post-training quantization damage grows with training tokens per parameter."""

__version__ = "0.1.0"
