"""Prediction sets, conformal p-values and referral for new images: the one implementation predict, serve and
evaluate share.

``model.json``'s ``conformal`` section holds, per model, the calibration fitted on the run's calibration rows
(:meth:`medstack.models.conformal.ConformalCalibration.to_dict`) and the referral operating point chosen on the same
rows (:func:`medstack.models.referral.choose_referral`); :func:`read_trust` reads them and :func:`trust_columns`
applies them, unchanged, to a model's probabilities. A bundle written before conformal calibration existed has no
such section: :func:`trust_columns` returns None and callers say so (:data:`NO_TRUST`) instead of inventing sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from medstack.models.conformal import ConformalCalibration, format_level, format_set
from medstack.models.referral import apply_referral

NO_TRUST = ("this bundle carries no conformal calibration (trained before medstack wrote one): no prediction "
            "sets, p-values or referral; retrain to get them")


def read_trust(meta: Mapping[str, Any], model: str) -> tuple[ConformalCalibration | None, dict[str, Any] | None]:
    """(calibration, referral point) of ``model`` from a parsed ``model.json``; (None, None) when it has none.
    A calibration whose numbers disagree with its derived fields raises ValueError (the caller names the file)."""
    section = meta.get("conformal")
    entry = (section.get("models") or {}).get(model) if isinstance(section, Mapping) else None
    if not isinstance(entry, Mapping):
        return None, None
    return ConformalCalibration.from_dict(entry["calibration"]), dict(entry["referral"])


def set_column(level: float) -> str:
    """The predictions table's column of the set at ``level``: ``set_90``, ``set_97.5``."""
    return "set_" + format_level(level).rstrip("%")


def p_value_column(class_name: str) -> str:
    """The predictions table's column of a class's conformal p-value: ``p_value:pneumonia``."""
    return f"p_value:{class_name}"


@dataclass(frozen=True)
class Trust:
    """Per image of one model: its set at every calibrated level, its class p-values and the referral verdict."""

    class_names: tuple[str, ...]
    sets: dict[float, np.ndarray]  # level -> (N, K) booleans
    p_values: np.ndarray  # (N, K)
    refer: np.ndarray  # (N,) booleans
    reasons: list[str]  # "" when kept
    certainty: np.ndarray  # (N,) conformal confidence

    def set_names(self, level: float) -> list[list[str]]:
        """Each image's set at ``level`` as class names (an empty list: no class plausible)."""
        return [[c for c, inside in zip(self.class_names, row) if inside] for row in self.sets[level]]

    def columns(self) -> dict[str, list[Any]]:
        """The predictions table's columns: ``set_<level>`` (``{pneumonia}``, ``{}`` for an empty set), ``p_value:
        <class>``, ``refer`` and ``refer_reason``."""
        out: dict[str, list[Any]] = {set_column(level): [format_set(row, self.class_names) for row in sets]
                                     for level, sets in self.sets.items()}
        for k, name in enumerate(self.class_names):
            out[p_value_column(name)] = self.p_values[:, k].tolist()
        out["refer"] = [bool(r) for r in self.refer]
        out["refer_reason"] = list(self.reasons)
        return out

    def row(self, i: int) -> dict[str, Any]:
        """One image's fields as ``POST /predict`` returns them."""
        return {"sets": {set_column(level): self.set_names(level)[i] for level in self.sets},
                "p_values": dict(zip(self.class_names, (float(p) for p in self.p_values[i]))),
                "refer": bool(self.refer[i]), "refer_reason": self.reasons[i]}


def trust_columns(calibration: ConformalCalibration | None, point: Mapping[str, Any] | None,
                  class_names: Sequence[str], proba: np.ndarray) -> Trust | None:
    """Sets at every calibrated level, p-values and referral of (N, K) probabilities ``proba``; None without a
    calibration (an older bundle). Nothing is refitted: the stored calibration and point are applied as they are."""
    if calibration is None or point is None:
        return None
    proba = np.asarray(proba, dtype=np.float64)
    referral = apply_referral(point, calibration, proba)
    return Trust(class_names=tuple(class_names),
                 sets={level: calibration.prediction_sets(proba, level) for level in calibration.levels},
                 p_values=calibration.p_values(proba), refer=referral.refer, reasons=referral.reasons,
                 certainty=referral.certainty)
