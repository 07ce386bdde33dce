"""Conformal coverage and referral on new labelled data: the bundle's calibration and referral point, never refitted.

Lost coverage is the signature of a shifted site: the bundle's sets were calibrated on rows like its training data,
and on another site's images a class's share of sets holding it falls below the level. The judging is the run's own
(:func:`medstack.models.trust.judge_trust`, which judged the run's test split into ``metrics.json``): per class and
level the coverage with its 95% Clopper-Pearson interval, set sizes, the risk-coverage rows and the referral point
applied unchanged. Per image, the sets, p-values and referral verdicts are the ones ``medstack predict`` writes
(:meth:`medstack.inference.bundle.Bundle.trust`). A bundle without conformal calibration gets
:data:`medstack.inference.trust.NO_TRUST` instead of numbers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import numpy as np

from medstack.inference.bundle import Bundle
from medstack.inference.trust import NO_TRUST, read_trust


def trust_report(bundle: Bundle, model: str, y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """``{"available": True, "rule": <in words>, "reasons": {kind: images}, "conformal": ..., "referral": ...}``
    of ``model`` on (``y``, ``proba``) (the ``conformal`` and ``referral`` of
    :func:`medstack.models.trust.judge_trust`, whose ``referral.test`` is these rows), or
    ``{"available": False, "note": NO_TRUST}``."""
    from medstack.models.trust import describe_rule, judge_trust

    calibration, point = read_trust(bundle.meta, model)
    if calibration is None or point is None:
        return {"available": False, "note": NO_TRUST}
    judged = judge_trust(y, proba, bundle.decision(model), calibration, point, bundle.classes)
    per_image = bundle.trust(model, proba)
    reasons = Counter(reason_kind(r) for r in per_image.reasons if r) if per_image is not None else Counter()
    return {"available": True, "rule": describe_rule(point, bundle.classes), "reasons": dict(reasons.most_common()),
            **judged}


def reference_trust(result: Mapping[str, Any]) -> dict[str, Any]:
    """The run's own test split as ``metrics.json`` judged it (same shape as :func:`trust_report`, without
    reasons), or the note for a run without conformal calibration."""
    if "conformal" not in result or "referral" not in result:
        return {"available": False, "note": NO_TRUST}
    return {"available": True, "conformal": result["conformal"], "referral": result["referral"]}


def reason_kind(reason: str) -> str:
    """``set of 2 classes at 95%`` -> ``set of 2 classes``; ``certainty 0.61 < 0.72`` -> ``certainty below the
    threshold``; ``empty set at 90%`` -> ``empty set``."""
    if reason.startswith("certainty"):
        return "certainty below the threshold"
    return reason.split(" at ")[0]


def lost_classes(levels: list[Mapping[str, Any]]) -> dict[float, list[str]]:
    """Per level, the classes whose coverage interval lies wholly below the level (lost beyond noise)."""
    return {entry["level"]: [row["class"] for row in entry["coverage"]
                             if row["available"] and row["n"] and row["ci_high"] < entry["level"]]
            for entry in levels}
