"""``medstack predict``: stream inputs through a bundle in batches and write one row per image, atomically.

Columns: ``input`` (the file path, or ``<npz>:<row>``), every model's class probabilities under the run's
``test_predictions.csv`` names (``stacking:p(pneumonia)``), ``predicted`` (the chosen model's label under its
decision from ``model.json``), ``model`` (which model chose it), then the chosen model's prediction set at every
calibrated level (``set_90`` = ``{pneumonia}``; ``{}`` when no class is plausible), its conformal p-value of every
class (``p_value:pneumonia``), ``refer`` (true/false) and ``refer_reason`` (:mod:`medstack.inference.trust`; a bundle
without conformal calibration gets none of these columns and a note), then ``run_id`` and ``warnings`` (input drift).
CSV, or Parquet when the output ends in ``.parquet``. Skipped images go to ``<output>.skipped.csv`` with the reason.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np
import pandas as pd

from medstack.inference.bundle import Bundle
from medstack.inference.inputs import InputError, count_inputs, iter_batches, list_inputs
from medstack.inference.stats import summarise_warnings
from medstack.inference.trust import NO_TRUST, Trust
from medstack.models.decision import apply_decision
from medstack.run_folder import probability_column


@dataclass
class PredictSummary:
    output: str
    run_id: str
    model: str
    scored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    warned_inputs: int = 0
    least_confident: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    referred: int | None = None  # images the referral rule hands to a person; None without conformal calibration
    referral_reasons: dict[str, int] = field(default_factory=dict)  # "set of 2 classes at 90%" -> images
    referral_rule: str | None = None  # the rule in words
    notes: list[str] = field(default_factory=list)  # said once per run (e.g. no conformal calibration)

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


def confidence(proba: np.ndarray, decision: dict[str, Any]) -> np.ndarray:
    """How far each row is from flipping its label: |P(positive) - threshold| for thresholds, else the margin
    between the best and second-best (offset) log-probabilities."""
    if decision.get("kind") == "threshold":
        return np.abs(proba[:, int(decision.get("positive_class", 1))] - float(decision["threshold"]))
    logp = np.log(np.clip(proba, 1e-12, None)) + np.asarray(decision.get("offsets") or 0.0)
    top = np.sort(logp, axis=1)
    return top[:, -1] - top[:, -2]


def decision_text(bundle: Bundle, model: str) -> str:
    """The model's decision in words: ``pneumonia if P >= 0.4321``, or the multi-class policy."""
    from medstack.models.decision import describe_decision

    decision = bundle.decision(model)
    if decision.get("kind") == "threshold":
        return f"{bundle.classes[int(decision.get('positive_class', 1))]} if P >= {decision['threshold']:.4f}"
    return describe_decision(decision, bundle.classes)


def predict(bundle: Bundle, source: str | Path, output: str | Path, *, scorer: Callable | None = None,
            use: str | None = None, batch_size: int = 256, on_bad_image: str = "error", least_confident: int = 10,
            progress: TextIO | None = None, on_batch: Callable[[Any, dict[str, np.ndarray], np.ndarray], None] | None = None,
            ) -> PredictSummary:
    """Score every image under ``source`` and write ``output``; returns what happened (for the CLI and the flow).
    ``progress``: a terminal stream to draw a progress bar on."""
    from medstack.inference.fused import make_scorer
    from medstack.storage import atomic_file, atomic_write_text

    model = bundle.check_model_name(use or bundle.recommended)
    decision = bundle.decision(model)
    output = Path(output)
    if output.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"{output}: the output must end in .csv or .parquet")
    listing = list_inputs(source)
    total = count_inputs(listing)
    scorer = scorer or make_scorer(bundle)
    classes = bundle.classes
    summary = PredictSummary(output=str(output), run_id=bundle.run_id, model=model)
    counts, kinds, worst, reasons = Counter(), Counter(), [], Counter()
    started = time.perf_counter()
    with atomic_file(output, mode=0o644) as handle, _Writer(handle, output.suffix.lower()) as writer:
        for batch in iter_batches(listing, bundle.input_shape, bundle.meta["training_statistics"], batch_size,
                                  on_bad_image):
            summary.skipped.extend(batch.skipped)
            if not batch.ids:
                continue
            scores = scorer(batch.images)
            labels = apply_decision(scores[model], decision)
            trust = bundle.trust(model, scores[model])
            writer.write(_frame(batch, scores, labels, bundle, model, trust))
            if trust is not None:
                reasons.update(_reason_kind(r) for r in trust.reasons if r)
                summary.referred = (summary.referred or 0) + int(trust.refer.sum())
            counts.update(classes[i] for i in labels)
            kinds.update(summarise_warnings(batch.warnings))
            summary.warned_inputs += sum(1 for w in batch.warnings if w)
            for ident, conf, label, proba in zip(batch.ids, confidence(scores[model], decision), labels, scores[model]):
                item = (-float(conf), ident, classes[int(label)], [round(float(p), 4) for p in proba])
                (heapq.heappush if len(worst) < least_confident else heapq.heappushpop)(worst, item)
            if on_batch is not None:
                on_batch(batch, scores, labels)
            summary.scored += len(batch.ids)
            if progress is not None:
                _show_progress(progress, summary.scored + len(summary.skipped), total, started)
        if summary.scored == 0:
            raise InputError(f"{source}: no image could be scored ({len(summary.skipped)} skipped); "
                             f"first: {summary.skipped[0] if summary.skipped else 'none'}")
    if progress is not None:
        print(file=progress)
    if summary.skipped:
        rows = pd.DataFrame(summary.skipped, columns=["input", "reason"])
        atomic_write_text(skipped_path(output), rows.to_csv(index=False))
    summary.seconds = time.perf_counter() - started
    summary.class_counts = {name: int(counts.get(name, 0)) for name in classes}
    summary.warnings = dict(kinds)
    summary.referral_reasons = dict(reasons)
    if bundle.has_trust:
        summary.referral_rule = referral_text(bundle, model)
    else:
        summary.notes.append(NO_TRUST)
    summary.least_confident = [{"input": i, "predicted": lab, "confidence": round(-c, 4), "probabilities": p}
                               for c, i, lab, p in sorted(worst, reverse=True)]
    return summary


def skipped_path(output: Path) -> Path:
    return output.with_name(output.name + ".skipped.csv")


def referral_text(bundle: Bundle, model: str) -> str | None:
    """The model's referral rule in words, from model.json; None without one."""
    from medstack.inference.trust import read_trust
    from medstack.models.trust import describe_rule

    _, point = read_trust(bundle.meta, model)
    return None if point is None else describe_rule(point, bundle.classes)


def _reason_kind(reason: str) -> str:
    """``set of 2 classes at 90%`` stays; ``certainty 0.61 < 0.72`` -> ``certainty below the threshold``."""
    return "certainty below the threshold" if reason.startswith("certainty") else reason


def _frame(batch, scores: dict[str, np.ndarray], labels: np.ndarray, bundle: Bundle, model: str,
           trust: Trust | None) -> pd.DataFrame:
    columns: dict[str, Any] = {"input": batch.ids}
    for name in [n for n in bundle.models if n in scores]:  # --engine student scores only the student
        for k, cls in enumerate(bundle.classes):
            columns[probability_column(name, cls)] = scores[name][:, k]
    columns["predicted"] = [bundle.classes[int(i)] for i in labels]
    columns["model"] = model
    columns.update(trust.columns() if trust is not None else {})
    columns["run_id"] = bundle.run_id
    columns["warnings"] = ["; ".join(text for _, text in found) for found in batch.warnings]
    return pd.DataFrame(columns)


class _Writer:
    """Appends frames to an open binary handle as CSV (header once) or Parquet (one row group per batch)."""

    def __init__(self, handle, suffix: str):
        self.handle, self.suffix, self._parquet, self._header = handle, suffix, None, True

    def __enter__(self) -> "_Writer":
        if self.suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError as exc:
                raise InputError("Parquet output needs pyarrow: pip install pyarrow (or write .csv)") from exc
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.suffix == ".csv":
            self.handle.write(frame.to_csv(index=False, header=self._header, float_format="%.9g").encode())
            self._header = False
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.handle, table.schema)
        self._parquet.write_table(table)

    def __exit__(self, *exc) -> None:
        if self._parquet is not None:
            self._parquet.close()


def _show_progress(stream: TextIO, done: int, total: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    width = 30
    filled = int(width * done / max(total, 1))
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} images  {rate:,.0f}/s")
    stream.flush()
