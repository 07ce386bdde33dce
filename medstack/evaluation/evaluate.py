"""One evaluation: a bundle's models judged on scored labelled data, beside the run's own test split.

:func:`evaluate_scored` composes ``evaluation.json``'s content from what was scored: per model, every metric at the
model's frozen decision with bootstrap intervals, calibration, conformal coverage and referral on the new data,
and the same for the run's own test split (``metrics.json`` and ``test_predictions.csv`` of the run folder: the
reference a shift is measured against); the drift guard's summary; and, only when asked, the recalibration of the
chosen model (:mod:`medstack.evaluation.recalibrate`). Plain numbers; nothing here writes a file.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import medstack
from medstack.evaluation.labelled import LabelledData
from medstack.evaluation.measures import Settings, calibration, class_counts, judge
from medstack.evaluation.score import Scored
from medstack.evaluation.trust import reference_trust, trust_report
from medstack.inference.bundle import Bundle

FORMAT = "medstack-evaluation"
SCHEMA_VERSION = 1


def evaluate_scored(bundle: Bundle, data: LabelledData, scored: Scored, settings: Settings, *, model: str,
                    evaluation_id: str, recalibrate: float | None = None, recalibrate_seed: int | None = None
                    ) -> dict[str, Any]:
    """``evaluation.json``'s content (see the module docstring); ``model`` is the chosen one (labels, the report's
    headline and, with ``recalibrate`` (the fitting fraction), the one recalibrated)."""
    from medstack.inference.predict import decision_text

    classes = bundle.classes
    reference = _reference(bundle, settings)
    models = {}
    for name in [n for n in bundle.models if n in scored.probas]:  # --engine student scores only the student
        decision = bundle.decision(name)
        proba = scored.probas[name]
        models[name] = {"decision": decision,
                        "external": {**judge(scored.labels, proba, decision, settings, classes),
                                     "trust": trust_report(bundle, name, scored.labels, proba)},
                        "run_test": reference.get(name)}
    out = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "medstack_version": medstack.__version__,
        "evaluation_id": evaluation_id,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": bundle.source, "run_id": bundle.run_id, "name": bundle.meta.get("name"),
                  "bundle": str(bundle.root), "chosen": model, "decision": decision_text(bundle, model)},
        "classes": classes,
        "data": {"source": data.source, "kind": data.kind, "classes_as_named": data.data_classes,
                 "images": len(scored.ids), "counts": class_counts(scored.labels, classes),
                 "skipped": len(scored.skipped), "run_test_counts": _reference_counts(bundle)},
        "settings": settings.to_dict(),
        "models": models,
        "drift": drift_summary(scored.warnings),
        "refitted": recalibrate is not None,
        "recalibration": None,
    }
    if recalibrate is not None:
        from medstack.evaluation.recalibrate import recalibrate as refit

        from medstack.inference.trust import read_trust

        conformal, point = read_trust(bundle.meta, model)
        out["recalibration"] = {"model": model, **refit(scored.labels, scored.probas[model], bundle.decision(model),
                                                        conformal, point, settings, classes, fraction=recalibrate,
                                                        seed=recalibrate_seed)}
    return out


def drift_summary(warnings: list[list[tuple[str, str]]]) -> dict[str, Any]:
    """The drift guard over the data: images warned about, and how many got each kind of warning."""
    from medstack.inference.stats import summarise_warnings

    warned = sum(1 for found in warnings if found)
    kinds: Counter = summarise_warnings(warnings)
    return {"images": len(warnings), "warned": warned, "share": warned / len(warnings) if warnings else 0.0,
            "kinds": dict(kinds.most_common())}


def _reference(bundle: Bundle, settings: Settings) -> dict[str, dict[str, Any]]:
    """Per model, the run's own test split as the run judged it (metrics.json: metrics, intervals, coverage and
    referral) with its calibration computed here from test_predictions.csv; {} for a folder without them."""
    from medstack.run_folder import RunFolderError, read_metrics, read_test_predictions

    try:
        metrics = read_metrics(bundle.root)["models"]
        test = read_test_predictions(bundle.root)
    except (RunFolderError, OSError, KeyError, ValueError):
        return {}
    out = {}
    for name, result in metrics.items():
        if name not in test.probas or "test" not in result:
            continue
        proba = test.probas[name]
        out[name] = {"metrics": result["test"], "ci": result.get("test_ci") or {},
                     "calibration": calibration(test.labels, proba, settings),
                     "trust": reference_trust(result)}
    return out


def _reference_counts(bundle: Bundle) -> dict[str, int] | None:
    """The run's test split per class, from model.json's data counts."""
    test = ((bundle.meta.get("data") or {}).get("counts") or {}).get("test")
    return {name: int(test.get(name, 0)) for name in bundle.classes} if isinstance(test, dict) else None
