import math

import numpy as np
import pytest

from medstack.report import diagnose_fit, make_plots, render_report
from models.metrics import bootstrap_ci, compute_metrics


@pytest.mark.parametrize(
    "history, verdict",
    [
        ({"loss": [1.0, 0.6, 0.4, 0.3, 0.2, 0.1], "val_loss": [1.0, 0.7, 0.5, 0.6, 0.8, 0.9]}, "overfitting"),
        ({"loss": [0.70, 0.69, 0.69, 0.69], "val_loss": [0.70, 0.70, 0.69, 0.70]}, "underfitting"),
        ({"loss": [1.0, 0.6, 0.4, 0.35], "val_loss": [1.0, 0.7, 0.55, 0.5]}, "ok"),
        ({"loss": [1.0, 0.6], "val_loss": [1.0, 0.7]}, "too_short"),
        # LDAM-DRW: the loss jumps at the switch to re-weighting; within the last phase all is healthy.
        ({"loss": [2.0, 1.0, 0.8, 3.0, 2.5, 2.2, 2.0], "val_loss": [2.0, 1.0, 0.9, 3.2, 2.8, 2.6, 2.5],
          "loss_phase": [0, 0, 0, 1, 1, 1, 1]}, "ok"),
    ],
    ids=["overfit", "underfit", "healthy", "short", "drw-jump"],
)
def test_diagnose_fit(history, verdict):
    got, why = diagnose_fit(history)
    assert got == verdict, why


def test_overfit_reason_names_the_epochs():
    _, why = diagnose_fit({"loss": [1.0, 0.6, 0.4, 0.3, 0.2], "val_loss": [1.0, 0.5, 0.6, 0.7, 0.9]})
    assert "from 0.500 (epoch 2) to 0.900" in why and "epoch-2 weights" in why


def _fake_run(k: int, rng):
    y = rng.integers(0, k, 90)
    names = [f"c{i}" for i in range(k)]
    probas = {}
    for model, signal in (("good", 2.0), ("weak", 0.3)):
        logits = rng.normal(size=(90, k)) + signal * np.eye(k)[y]
        probas[model] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    threshold = 0.5 if k == 2 else None
    metrics = {
        "dataset": {"name": "fake", "classes": names, "counts": {s: {n: 10 for n in names} for s in ("train", "val", "test")}},
        "models": {
            m: {
                "test": compute_metrics(y, p, threshold, class_names=names),
                "oof": compute_metrics(y, p, threshold, class_names=names),
                "test_ci": {key: list(v) for key, v in bootstrap_ci(y, p, threshold, n_boot=50).items()},
            }
            for m, p in probas.items()
        },
    }
    history = {0: {"loss": [1.0, 0.5, 0.4], "val_loss": [1.0, 0.6, 0.5], "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.5, 0.6, 0.7], "loss_phase": [0, 1, 1]}}
    return y, probas, metrics, {"good": history, "weak": history}, names


@pytest.mark.parametrize("k", [2, 3])
def test_make_plots_writes_png_files(tmp_path, rng, k):
    y, probas, metrics, histories, names = _fake_run(k, rng)
    files = make_plots(tmp_path, metrics, y, probas, histories, names, positive_class=1)
    assert set(files.values()) == {"roc.png", "pr.png", "confusion_test.png", "calibration.png", "curves_good.png", "curves_weak.png"}
    for name in files.values():
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_render_report_ranks_models_and_shows_cis_notes_and_plots(rng):
    y, probas, metrics, histories, names = _fake_run(2, rng)
    metrics["models"]["weak"]["test"]["mcc"] = math.nan
    text = render_report(metrics, {"good": {0: ("ok", "fine")}}, {"ROC": "plots/roc.png"}, ["SMOTE k lowered"], {"threshold policy": "youden"})
    board = text.split("## Test leaderboard")[1].split("## Which model")[0]
    assert board.index("| good |") < board.index("| weak |")
    ci = metrics["models"]["good"]["test_ci"]["roc_auc"]
    assert f"[{ci[0]:.3f}, {ci[1]:.3f}]" in board
    assert "n/a" in board
    assert "**good** has the highest test ROC AUC" in text
    assert "- SMOTE k lowered" in text and "- threshold policy: youden" in text
    assert "![ROC](plots/roc.png)" in text
