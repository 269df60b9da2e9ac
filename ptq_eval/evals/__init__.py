"""Evaluations that pair full-precision and quantized runs on exactly the same tokens or documents.

windows.py builds token windows, perplexity.py scores them, harness.py runs lm-eval tasks,
paired.py turns two runs into δ with a paired CI, evaluators.py is what the runner calls.
"""
