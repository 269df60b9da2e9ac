"""Evaluations that pair full-precision and quantized runs on exactly the same tokens or documents.

kinds/ holds the eval kinds the runner calls (one module each); windows.py builds token windows, perplexity.py
scores them, distribution.py compares their next-token distributions, harness.py runs lm-eval tasks, flips.py
compares their answers, paired.py turns two runs into δ with a paired CI, metrics.py says what each metric is.
"""
