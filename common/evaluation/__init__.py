"""Evaluation of segmentations: per-case metrics and their tables, statistics, the RW diagnostic, figures."""
