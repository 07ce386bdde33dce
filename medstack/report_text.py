"""Plain text for the run report (:mod:`medstack.report`): numbers, table cells and the run's facts as sentences.

metrics.json keeps the structure; here it is written for a reader: the exact-duplicate and patient-grouping
summaries of ``metrics["dataset"]`` as one sentence each, the run details as list items, the calibration and decision
rule as a line each, the training recipe each strategy resolved (a report table and config.yaml's header). Nothing
here prints a Python dict or list repr.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from medstack.run_folder import training_label


def is_nan(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(value)


def format_number(value: Any) -> str:
    """3 decimals for reals, "n/a" for None and nan."""
    if value is None or is_nan(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_, numbers.Integral)):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{float(value):.3f}"
    return str(value)


def fmt_value(value: Any) -> str:
    """A value as plain text on one line: numbers as in tables, sequences ``a, b``, mappings ``k: v; k: v`` (no
    Python reprs: the report is read by people, metrics.json holds the structure)."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {fmt_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(fmt_value(v) for v in value) or "none"
    if isinstance(value, str):
        return value
    return format_number(value)


def _count(n: Any, noun: str) -> str:
    """``1 group``, ``27 groups``; ``n/a groups`` when the count is missing (an older run)."""
    return f"{format_number(n)} {noun}" + ("" if n == 1 else "s")


def _plain_number(value: Any) -> str:
    """Counts and medians as written in a sentence: ``3``, ``88.5``."""
    if isinstance(value, numbers.Real) and not is_nan(value):
        return f"{value:g}"
    return format_number(value)


def cell(text: Any) -> str:
    """Safe inside a markdown table cell or list item: ``|`` and ``<`` escaped (file patterns such as
    ``SOB_<B|M>_<type>`` or a regex's ``(?P<group>...)`` would otherwise split a cell or vanish as HTML tags)."""
    return str(text).replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def duplicates_sentence(duplicates: Mapping) -> str:
    """metrics.json's ``dataset.duplicates`` as one sentence: groups, images, crossings, conflicts, handling."""
    d = duplicates
    return (f"Exact-duplicate images: {_count(d.get('groups'), 'group')} ({_count(d.get('images'), 'image')}); "
            f"{format_number(d.get('crossing_splits'))} cross train/val/test, {format_number(d.get('crossing_folds'))} "
            f"cross folds; {format_number(d.get('conflicting_labels'))} with conflicting labels; "
            f"{d.get('handling', 'handling not recorded')}.")


def grouping_sentence(grouping: Mapping) -> str:
    """metrics.json's ``dataset.grouping`` (the ``data.group_by`` patient groups) as one sentence."""
    g = grouping
    if g.get("kind") in (None, "none"):
        return ("Patient grouping: none (no `data.group_by`): each image is split on its own, so images of one "
                "patient may land in different splits.")
    per = g.get("images_per_group") or {}
    sizes = "/".join(_plain_number(per.get(k)) for k in ("min", "median", "max"))
    return (f"Patient grouping ({g['kind']}, ids from {g.get('source') or 'the dataset group ids'}): "
            f"{_count(g.get('groups'), 'group')}, {sizes} images per group (min/median/max); "
            f"{format_number(g.get('crossing_splits'))} cross train/val/test, {format_number(g.get('crossing_folds'))} "
            f"cross folds; {format_number(g.get('mixed_class_groups'))} with images in more than one class; "
            f"{format_number(g.get('merged_by_duplicates'))} merged with another group through exact-duplicate "
            f"images; {g.get('handling', 'handling not recorded')}.")


DETAIL_LABELS = {  # summarise_training's keys, as a reader would name them
    "wall_seconds": "wall time of the run (s)",
    "flow_peak_rss_mb": "peak memory of the flow process (MB)",
    "trained": "fold models trained",
    "cache_hits": "fold models taken from the cache",
    "training_seconds": "training time summed over the trained fold models (s)",
}


def detail_lines(extra: Mapping) -> list[str]:
    """Run details as list items; a mapping (e.g. the meta-model's weights per base model) as nested items."""
    lines = []
    for key, value in extra.items():
        label = DETAIL_LABELS.get(key, key)
        if isinstance(value, Mapping) and value:
            lines += [f"- {cell(label)}:", *(f"  - {cell(k)}: {cell(fmt_value(v))}" for k, v in value.items())]
        else:
            lines.append(f"- {cell(label)}: {cell(fmt_value(value))}")
    return lines or ["- none"]


def calibration_summary(calibration: str, fold_info: Mapping[str, Mapping[int, Mapping]]) -> str:
    """How the fold models' probabilities were calibrated (``training.calibration``), with each fold's temperature."""
    if calibration == "none":
        return "none (plain softmax of each fold model's logits)"
    per_strategy = {s: [per[k].get("temperature") for k in sorted(per)] for s, per in fold_info.items()}
    listed = "; ".join(f"{s}: {', '.join('?' if t is None else f'{t:.2f}' for t in ts)}" for s, ts in per_strategy.items())
    return f"temperature scaling, one T per fold model fitted on the val split (probabilities = softmax(logits / T)); T per fold: {listed}"


def decision_policy_summary(n_classes: int, threshold_policy: str, multiclass_policy: str,
                            critical_classes: Mapping[str, float]) -> str:
    """The decision rule every model's labels follow, chosen on OOF predictions."""
    if n_classes == 2:
        policy = f"binary: threshold by {threshold_policy}"
    else:
        policy = f"multi-class: {multiclass_policy}" + "".join(
            f", critical class {c} (recall target {t:g})" for c, t in critical_classes.items())
    return policy + ", chosen on OOF predictions (the student's on the calibration slice)"


def fold_notes(fold_info: Mapping[str, Mapping[int, Mapping]]) -> list[str]:
    """Every fold model's training notes, named by strategy and fold (1-based)."""
    return [f"{training_label(strategy, fold)}: {note}"
            for strategy, per_fold in fold_info.items()
            for fold, info in per_fold.items()
            for note in info.get("notes", [])]


def recipe_summary(fold_info: Mapping[str, Mapping[int, Mapping]]) -> dict[str, dict[str, str]]:
    """The training recipe each strategy's folds resolved from the step budget (models.recipe), as readable ranges:
    rows trained on, steps per epoch, epochs planned and run, steps run, patience, earliest stop, TTA views."""

    def span(values: list[Any]) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        low, high = min(values), max(values)
        return f"{low}" if low == high else f"{low}-{high}"

    out = {}
    for strategy, per_fold in fold_info.items():
        infos = [per_fold[k] for k in sorted(per_fold)]
        recipes = [info.get("recipe") or {} for info in infos]
        out[strategy] = {
            "training rows": span([i.get("n_train", 0) + i.get("n_synthetic", 0) for i in infos]),
            "batch size": span([r.get("batch_size") for r in recipes]),
            "steps/epoch": span([r.get("steps_per_epoch") for r in recipes]),
            "epochs planned": span([r.get("epochs") for r in recipes]),
            "epochs run": span([i.get("epochs_run") for i in infos]),
            "steps run": span([i.get("steps_run") for i in infos]),
            "patience (epochs)": span([r.get("patience_epochs") for r in recipes]),
            "no stop before epoch": span([None if r.get("stop_from_epoch") is None else r["stop_from_epoch"] + 1
                                          for r in recipes]),
            "warm-up steps": span([r.get("warmup_steps") for r in recipes]),
            "monitor": span([r.get("monitor") for r in recipes]),
            "TTA views": span([i.get("tta_views") for i in infos]),
        }
    return out


def recipe_comment(recipe: Mapping[str, Mapping[str, str]]) -> str:
    """config.yaml's header: the values the step budget resolved to, which the config itself does not state."""
    lines = ["# Training recipe as resolved for this run's folds (from training.min_steps, stop_after_steps,",
             "# patience_steps and the fold sizes; ranges over folds):"]
    for strategy, values in recipe.items():
        lines.append(f"#   {strategy}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "\n".join(lines) + "\n"
