"""Scoring labelled images: prediction's reader and scorer, with each image's label kept beside its scores.

Nothing is decided here: the probabilities of every model of the bundle, the labels (in the bundle's class order)
and the drift guard's warnings come back for :mod:`medstack.evaluation.evaluate` to judge.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from medstack.evaluation.labelled import EvaluationError, LabelledData
from medstack.inference.bundle import Bundle
from medstack.inference.inputs import iter_batches


@dataclass
class Scored:
    """Every scored image of the data, in reading order."""

    ids: list[str]
    labels: np.ndarray  # (N,) in the bundle's class order
    probas: dict[str, np.ndarray]  # model -> (N, K)
    warnings: list[list[tuple[str, str]]]  # the drift guard's (kind, message) per image
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)


def score_labelled(bundle: Bundle, data: LabelledData, *, scorer: Callable | None = None, engine: str = "fused",
                   batch_size: int = 256, on_bad_image: str = "error") -> Scored:
    """Stream ``data`` through the bundle. The first batch is read before the scorer is built, so an input that
    cannot be scored (an npz of another image size, an unreadable file) fails before any model loads."""
    batches = iter_batches(data.listing, bundle.input_shape, bundle.meta["training_statistics"], batch_size,
                           on_bad_image)
    first = next(batches, None)
    if scorer is None:
        from medstack.inference.fused import make_scorer

        scorer = make_scorer(bundle, engine)
    ids: list[str] = []
    warnings: list[list[tuple[str, str]]] = []
    skipped: list[tuple[str, str]] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in bundle.models}
    for batch in itertools.chain([first] if first is not None else [], batches):
        skipped.extend(batch.skipped)
        if not batch.ids:
            continue
        scores = scorer(batch.images)
        for name in [n for n in bundle.models if n in scores]:  # --engine student scores only the student
            parts[name].append(np.asarray(scores[name], dtype=np.float64))
        ids.extend(batch.ids)
        warnings.extend(batch.warnings)
    if not ids:
        raise EvaluationError(f"{data.source}: no image could be scored ({len(skipped)} skipped); "
                              f"first: {skipped[0] if skipped else 'none'}")
    probas = {name: np.concatenate(chunks) for name, chunks in parts.items() if chunks}
    return Scored(ids=ids, labels=data.labels_of(ids), probas=probas, warnings=warnings, skipped=skipped)
