"""Scoring restored faces: test sets, folders and the held-out benchmark.

Above the pipeline: this package uses :mod:`honestface.metrics` (pure functions on tensors),
the face backends, the model loaders and the degradation, which the metrics themselves do
not depend on.

- :mod:`.evaluator`: :class:`~.evaluator.Evaluator` scores image pairs and folders with a
  report of what could not be computed and why (``honestface score`` / ``evaluate``).
- :mod:`.heldout`: restoration quality on held-out people at a fixed degradation
  (``benchmarks/bench_nano.py``).
"""

from .evaluator import EvaluationReport, Evaluator, ImagePair, PairScore, pair_folders

__all__ = ["EvaluationReport", "Evaluator", "ImagePair", "PairScore", "pair_folders"]
