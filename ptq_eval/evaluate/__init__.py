"""Evaluations that pair full-precision and quantized runs on exactly the same tokens."""
