"""Plain text for the run report (:mod:`medstack.report`): numbers, table cells and the run's facts as sentences.

metrics.json keeps the structure; here it is written for a reader: the exact-duplicate and patient-grouping
summaries of ``metrics["dataset"]`` as one sentence each, the run details as list items. Nothing here prints a Python
dict or list repr.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np


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
