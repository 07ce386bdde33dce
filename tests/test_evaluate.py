"""`medstack evaluate` and the medstack-evaluate flow against the session's real smoke run (``smoke_bundle``).

Two evaluations in all: the run's own test split written as a labelled npz through the CLI (its metrics must be the
run's own test metrics, intervals included), and a contrast- and brightness-shifted copy as a class-folder of PNGs
through the flow, recalibrated. Bad inputs fail before any model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medstack.cli import main
from medstack.evaluation.folder import read_evaluation

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLASSES = ["normal", "pneumonia"]


@pytest.fixture(scope="module")
def own_test(smoke_bundle, pneumonia_npz, tmp_path_factory):
    """The run's test split as a labelled npz, rows in test_predictions.csv's order (so the bootstrap resamples
    the same rows), with the images and the table."""
    from medstack.data.npz import load_npz

    frame = pd.read_csv(smoke_bundle / "test_predictions.csv")
    dataset = load_npz(pneumonia_npz, "pneumoniamnist")
    images, labels = dataset.images[frame["row"].to_numpy()][..., 0], dataset.labels[frame["row"].to_numpy()]
    path = tmp_path_factory.mktemp("site") / "own_test.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(CLASSES))
    return path, images, labels, frame


def _evaluation_folder(out: Path) -> Path:
    [folder] = [p for p in out.iterdir() if not p.name.startswith(".")]
    return folder


def test_evaluating_the_runs_own_test_split_gives_the_runs_own_test_metrics(smoke_bundle, own_test, tmp_path,
                                                                            capsys):
    path, _, labels, frame = own_test
    out = tmp_path / "evaluations"
    assert main(["evaluate", "--model", str(smoke_bundle), "--data", str(path), "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    folder = _evaluation_folder(out)
    assert captured.out.strip() == str(folder) and f"evaluation folder: {folder}" in captured.err
    assert sorted(p.name for p in folder.iterdir()) == ["evaluation.json", "plots", "predictions.csv", "report.md"]
    assert sorted(p.name for p in (folder / "plots").iterdir()) == ["confusion.png", "reliability.png"]
    ev = read_evaluation(folder)
    run = json.loads((smoke_bundle / "metrics.json").read_text())
    assert ev["data"]["counts"] == ev["data"]["run_test_counts"] and not ev["refitted"] and ev["recalibration"] is None
    for name, result in run["models"].items():
        mine = ev["models"][name]
        assert mine["decision"] == result["decision"]
        ours, theirs = mine["external"], result
        assert ours["metrics"]["confusion_matrix"] == theirs["test"]["confusion_matrix"], name
        for key, value in theirs["test"].items():
            if isinstance(value, float):
                assert ours["metrics"][key] == pytest.approx(value, abs=1e-4, nan_ok=True), (name, key)
        for key, (low, high) in theirs["test_ci"].items():
            assert ours["ci"][key] == pytest.approx([low, high], abs=1e-4, nan_ok=True), (name, key)
        # The run's own split, as the evaluation shows it beside: metrics.json's numbers, and the same calibration.
        assert mine["run_test"]["metrics"] == theirs["test"]
        assert ours["calibration"]["ece"] == pytest.approx(mine["run_test"]["calibration"]["ece"], abs=1e-4)
        # Conformal coverage and referral on this data are the run's own on its test split (judge_trust's numbers).
        assert mine["external"]["trust"]["available"], name
        _assert_close(ours["trust"]["conformal"], result["conformal"], name)
        _assert_close(ours["trust"]["referral"], result["referral"], name)
        assert mine["run_test"]["trust"]["conformal"] == result["conformal"]
    table = pd.read_csv(folder / "predictions.csv")
    assert len(table) == len(frame) and table["label"].tolist() == [CLASSES[k] for k in labels]
    for column in [c for c in frame.columns if ":p(" in c]:
        np.testing.assert_allclose(table[column], frame[column], atol=1e-4, err_msg=column)
    chosen = ev["model"]["chosen"]
    assert set(table["model"]) == {chosen}
    assert (table["predicted"] == table["label"]).sum() == np.trace(ev["models"][chosen]["external"]["metrics"][
        "confusion_matrix"])
    # predictions.csv carries predict's per-image sets and referral; they add up to the coverage and referral share.
    from medstack.inference.trust import set_column

    trust = ev["models"][chosen]["external"]["trust"]
    assert table["refer"].mean() == pytest.approx(trust["referral"]["test"]["referred"])
    for entry in trust["conformal"]["levels"]:
        column = set_column(entry["level"])
        holds = [label in text.strip("{}").split(", ") for label, text in zip(table["label"], table[column])]
        for row in entry["coverage"]:
            of_class = table["label"] == row["class"]
            assert sum(h for h, c in zip(holds, of_class) if c) == row["covered"], (column, row)
    report = (folder / "report.md").read_text()
    assert "Nothing was refitted on this data" in report and "![Reliability](plots/reliability.png)" in report
    assert "## Conformal coverage and referral" in report and "Referral, unchanged: refer when" in report


def _assert_close(ours, theirs, where: str) -> None:
    """Equal JSON trees, floats within 1e-6 (the fused scorer's float32 against the run's own)."""
    if isinstance(theirs, dict):
        assert set(ours) == set(theirs), where
        for key in theirs:
            _assert_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=1e-6), where
    else:
        assert ours == theirs, where


def test_shifted_site_through_the_flow_with_recalibration(prefect_harness, smoke_bundle, own_test, tmp_path):
    """A class-folder of PNGs with contrast halved and brightness raised, judged through the medstack-evaluate
    flow by a registry alias, refitted on a stratified half: folder, report and artifacts carry the numbers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from medstack.evaluation.measures import judge, run_settings
    from medstack.evaluation.recalibrate import with_temperature
    from medstack.flows.evaluate import evaluate_flow
    from medstack.inference.registry import promote
    from medstack.inference.stats import pixel_warnings, summarise_warnings

    _, images, labels, _ = own_test
    shifted = np.rint(np.clip(images.astype(float) * 0.5 + 100, 0, 255)).astype(np.uint8)
    site = tmp_path / "site-b"
    for i, (pixels, label) in enumerate(zip(shifted, labels)):
        (site / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(site / CLASSES[label] / f"scan_{i:03d}.png")
    registry = tmp_path / "registry.json"
    promote(smoke_bundle, "champion", registry=registry)
    folder = Path(evaluate_flow(data=str(site), model="pneumoniamnist-smoke@champion", registry=str(registry),
                                output_dir=str(tmp_path / "evaluations"), recalibrate=0.5, bootstrap=50))
    ev = read_evaluation(folder)
    assert ev["model"]["run_id"] == smoke_bundle.name and ev["data"]["kind"] == "folder"
    assert ev["data"]["counts"] == {c: int((labels == k).sum()) for k, c in enumerate(CLASSES)}
    # The drift guard's summary is the guard's own verdict on these pixels.
    stats = json.loads((smoke_bundle / "model.json").read_text())["training_statistics"]
    expected = summarise_warnings(pixel_warnings(shifted[..., None], stats))
    assert ev["drift"]["kinds"] == dict(expected) and ev["drift"]["images"] == len(labels)

    rc = ev["recalibration"]
    chosen = ev["model"]["chosen"]
    assert rc["model"] == chosen and rc["fraction"] == 0.5 and ev["refitted"]
    for k, name in enumerate(CLASSES):  # a stratified half of each class, the rest judged
        assert rc["fitted_on"][name] == round(0.5 * (labels == k).sum())
        assert rc["fitted_on"][name] + rc["judged_on"][name] == (labels == k).sum()
    table = pd.read_csv(folder / "predictions.csv")
    y = np.array([CLASSES.index(c) for c in table["label"]])
    proba = table[[f"{chosen}:p({c})" for c in CLASSES]].to_numpy()
    rest = np.ones(len(y), bool)
    rest[rc["fitted_rows"]] = False
    settings = run_settings(smoke_bundle, CLASSES, n_boot=50)
    before = judge(y[rest], proba[rest], rc["before"]["decision"], settings, CLASSES)
    after = judge(y[rest], with_temperature(proba, rc["temperature"])[rest], rc["decision"], settings, CLASSES)
    for mine, recomputed in ((rc["before"], before), (rc["after"], after)):
        assert mine["metrics"]["confusion_matrix"] == recomputed["metrics"]["confusion_matrix"]
        assert mine["calibration"]["ece"] == pytest.approx(recomputed["calibration"]["ece"], abs=1e-6)
        assert mine["metrics"]["roc_auc"] == pytest.approx(recomputed["metrics"]["roc_auc"], abs=1e-6)
    # Refitted split conformal quantiles and referral point, judged on the rest; the frozen ones beside them.
    assert rc["conformal"]["kind"] == "split" and sum(rc["conformal"]["counts"]) == len(rc["fitted_rows"])
    for part in ("before", "after"):
        assert rc[part]["trust"]["referral"]["test"]["n"] == int(rest.sum())
        assert [e["level"] for e in rc[part]["trust"]["conformal"]["levels"]] == rc["conformal"]["levels"]
    report = (folder / "report.md").read_text()
    assert "## Recalibration on this data" in report and "before (frozen)" in report and "after (refitted)" in report

    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-report", "evaluate-metrics"])))}
    assert "data:image/png;base64," in found["evaluate-report"].data
    rows = found["evaluate-metrics"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert {r["model"] for r in rows} == set(ev["models"])


def _bad(args: list[str], capsys) -> tuple[int, str]:
    code = main(["evaluate", *args])
    return code, capsys.readouterr().err


def test_bad_inputs_exit_2_with_one_clear_line_and_no_folder(smoke_bundle, tmp_path, capsys):
    """Class mismatch (npz and folder), unlabelled data (npz without labels, loose images, no class names) and an
    npz of another image size: exit 2 before any model is loaded, one line naming the culprit, no folder."""
    out = tmp_path / "evaluations"
    model = ["--model", str(smoke_bundle), "--output-dir", str(out)]
    pixels = np.zeros((6, 28, 28), np.uint8)
    mismatch = tmp_path / "covid.npz"
    np.savez(mismatch, images=pixels, labels=np.arange(6) % 2, class_names=np.array(["normal", "covid"]))
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, images=pixels)
    unnamed = tmp_path / "unnamed.npz"
    np.savez(unnamed, images=pixels, labels=np.arange(6) % 2)
    large = tmp_path / "large.npz"
    np.savez(large, images=np.zeros((6, 32, 32), np.uint8), labels=np.arange(6) % 2, class_names=np.array(CLASSES))
    folder_mismatch = tmp_path / "site-c"
    loose = tmp_path / "loose"
    for target in (folder_mismatch / "normal", folder_mismatch / "covid", loose):
        target.mkdir(parents=True)
        Image.fromarray(pixels[0]).save(target / "a.png")
    cases = {
        "class mismatch (npz)": ([*model, "--data", str(mismatch)],
                                 ["the data's classes ['normal', 'covid']", "model's classes ['normal', 'pneumonia']"]),
        "class mismatch (folder)": ([*model, "--data", str(folder_mismatch)],
                                    ["the data's classes ['covid', 'normal']", "['normal', 'pneumonia']"]),
        "unlabelled npz": ([*model, "--data", str(unlabelled)], ["no labels (labels missing", "medstack predict"]),
        "unlabelled folder": ([*model, "--data", str(loose)], ["directly in the folder with no class sub-folder"]),
        "no class names": ([*model, "--data", str(unnamed)], ["does not name its classes", "--class-names"]),
        "wrong image size": ([*model, "--data", str(large)], ["shape (6, 32, 32)", "(N, 28, 28, 1)"]),
    }
    for case, (args, phrases) in cases.items():
        code, err = _bad(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("medstack: "), (case, err)
        for phrase in phrases:
            assert phrase in lines[0], (case, phrase, lines[0])
        assert not out.exists() or not any(out.iterdir()), case
