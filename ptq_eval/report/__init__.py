"""Reports: a study's Markdown + self-contained HTML report, and comparisons of two studies or checkpoints."""
