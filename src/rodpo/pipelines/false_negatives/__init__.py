"""``false_negatives``: the paper's Figure 1 claim on generated data with known preferences; how often
the sampled loser (top-K uniform, argmax, random) is an item the user truly prefers."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
