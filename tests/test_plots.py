"""Plots of a run (medstack.plots): every PNG written, thread-safe, no matplotlib at import, no pyplot."""

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medstack.plots import make_plots
from medstack.fit_diagnosis import diagnose_all
from medstack.report import render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[1]


def _model_result(y, proba, names, threshold):
    """A metrics entry as evaluate_on_test writes it, computed here so the test does not lean on models.metrics."""
    k = proba.shape[1]
    pred = (proba[:, 1] >= threshold).astype(int) if k == 2 else proba.argmax(axis=1)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, pred), 1)
    auc = roc_auc_score(y, proba[:, 1]) if k == 2 else roc_auc_score(y, proba, multi_class="ovr")
    scalars = dict.fromkeys(["accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "pr_auc",
                             "mcc", "brier"], 0.5)
    per_class = {n: {"precision": 0.5, "recall": 0.5, "specificity": 0.5, "f1": 0.5, "support": int(cm[i].sum())}
                 for i, n in enumerate(names)}
    m = {**scalars, "roc_auc": float(auc), "threshold": threshold if k == 2 else None,
         "confusion_matrix": cm.tolist(), "per_class": per_class}
    return {"test": m, "oof": dict(m), "test_ci": {key: [0.4, 0.6] for key in scalars} | {"roc_auc": [auc - .05, auc]}}


def _fake_run(k: int, rng):
    y = np.concatenate([np.arange(k), rng.integers(0, k, 117)])  # every class present
    names = [f"c{i}" for i in range(k)]
    probas = {}
    for model, signal in (("good", 2.0), ("weak", 0.3), ("flat", 0.0)):
        logits = rng.normal(size=(len(y), k)) + signal * np.eye(k)[y]
        probas[model] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    threshold = 0.4 if k == 2 else None
    metrics = {
        "dataset": {"name": "fake", "classes": names, "counts": {s: {n: 10 for n in names} for s in ("train", "val", "test")}},
        "models": {m: _model_result(y, p, names, threshold) for m, p in probas.items()},
    }
    drw = {"loss": [1.0, 0.5, 0.4, 0.9, 0.8, 0.7], "val_loss": [1.0, 0.6, 0.5, 1.0, 0.9, 0.85],
           "accuracy": [0.5, 0.7, 0.8, 0.75, 0.8, 0.85], "val_accuracy": [0.5, 0.6, 0.7, 0.65, 0.7, 0.72],
           "loss_phase": [0, 0, 0, 1, 1, 1]}
    plain = {key: v[:4] for key, v in drw.items() if key != "loss_phase"}
    return y, probas, metrics, {"ldam": {0: drw, 1: drw}, "smote": {0: plain, 1: plain}}, names


EXPECTED_FILES = {"roc.png", "pr.png", "confusion_test.png", "calibration.png", "curves_ldam.png", "curves_smote.png"}


def _assert_pngs(folder: Path, names) -> None:
    for name in names:
        data = (folder / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name


@pytest.mark.parametrize("k", [2, 3])
def test_make_plots_writes_png_files(tmp_path, rng, k):
    y, probas, metrics, histories, names = _fake_run(k, rng)
    files = make_plots(tmp_path / "plots", metrics, y, probas, histories, names, positive_class=1)
    assert set(files.values()) == EXPECTED_FILES
    assert files["Training curves: ldam"] == "curves_ldam.png"
    assert {p.name for p in (tmp_path / "plots").iterdir()} == EXPECTED_FILES
    _assert_pngs(tmp_path / "plots", EXPECTED_FILES)


def test_make_plots_is_safe_in_threads(tmp_path, rng):
    runs = [_fake_run(k, rng) for k in (2, 3, 2)]
    errors = []

    def render(i, run):
        y, probas, metrics, histories, names = run
        try:
            make_plots(tmp_path / str(i), metrics, y, probas, histories, names, positive_class=1)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=render, args=(i, run)) for i, run in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(len(runs)):
        _assert_pngs(tmp_path / str(i), EXPECTED_FILES)


def test_no_matplotlib_on_import_and_no_pyplot_when_plotting(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import medstack.plots as r\n"
        "assert 'matplotlib' not in sys.modules, 'imported at import time'\n"
        f"r.plot_calibration({str(tmp_path / 'c.png')!r}, np.array([0, 1, 0, 1]),"
        " {'m': np.array([[.8, .2], [.3, .7], [.6, .4], [.1, .9]])}, 1)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot used'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_report_from_plot_run_renders(tmp_path, rng):
    """make_plots' labels feed render_report as outputs.write_run does."""
    y, probas, metrics, histories, names = _fake_run(3, rng)
    files = make_plots(tmp_path, metrics, y, probas, histories, names, positive_class=1)
    text = render_report(metrics, diagnose_all(histories), {k: f"plots/{v}" for k, v in files.items()}, [], {})
    assert "![Confusion matrices](plots/confusion_test.png)" in text
    board = text.split("## Test leaderboard", 1)[1].split("## Which model", 1)[0]
    assert board.index("| good |") < board.index("| weak |")
