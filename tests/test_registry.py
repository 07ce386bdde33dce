"""The registry: `<name>@<alias>`, promotion with history, and the auto-promotion rule of scheduled retrains.

The rule is exercised on copies of one real run whose test predictions are edited to make the candidate better,
worse or trained on other data, so each branch of the rule is reached on real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medstack.cli import main
from medstack.config import load_config
from medstack.inference.bundle import load_bundle
from medstack.inference.promotion import auto_promote, describe_auto_promotion, promote_run
from medstack.inference.registry import RegistryError, history, promote, read_registry, resolve

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _copy(smoke_bundle: Path, runs: Path, run_id: str, *, predictions: str | None = None,
          fingerprint: str | None = None) -> Path:
    """A copy of the smoke run under another run id; ``predictions`` 'perfect' or 'reversed' rewrites the
    recommended model's test probabilities; ``fingerprint`` pretends it trained on other data."""
    run = runs / run_id
    shutil.copytree(smoke_bundle, run)
    meta = json.loads((run / "model.json").read_text())
    meta["run_id"] = run_id
    if fingerprint:
        meta["data"]["fingerprint"] = fingerprint
    (run / "model.json").write_text(json.dumps(meta))
    if predictions:
        frame = pd.read_csv(run / "test_predictions.csv")
        model, (neg, pos) = meta["recommended"]["model"], meta["classes"]
        p = frame["label"].astype(float) if predictions == "perfect" else 1.0 - frame["label"].astype(float)
        frame[f"{model}:p({pos})"], frame[f"{model}:p({neg})"] = p, 1.0 - p
        frame.to_csv(run / "test_predictions.csv", index=False)
    return run


def test_promote_resolve_and_history(smoke_bundle, tmp_path, capsys):
    runs = tmp_path / "runs"
    first = _copy(smoke_bundle, runs, "run-a")
    second = _copy(smoke_bundle, runs, "run-b")
    registry = runs / "registry.json"
    assert main(["promote", str(first), "--alias", "champion", "--registry", str(registry)]) == 0
    assert "pneumoniamnist-smoke@champion -> run run-a (was unset)" in capsys.readouterr().out
    promote(second, "champion", registry=registry, reason="better on the new scanner", by="tester")
    assert resolve("pneumoniamnist-smoke@champion", registry) == second
    assert load_bundle("pneumoniamnist-smoke@champion", registry).run_id == "run-b"
    events = history("pneumoniamnist-smoke", registry)
    assert [(e["run_id"], e["previous_run_id"], e["reason"]) for e in events] == [
        ("run-a", None, "manual promotion"), ("run-b", "run-a", "better on the new scanner")]
    assert events[1]["who"] == "tester" and events[0]["when"] <= events[1]["when"]
    # Paths under the registry's folder are stored relative to it: runs/ can move as a whole.
    assert read_registry(registry)["models"]["pneumoniamnist-smoke"]["aliases"]["champion"]["path"] == "run-b"
    assert main(["models", "--registry", str(registry)]) == 0
    assert "pneumoniamnist-smoke@champion -> run-b" in capsys.readouterr().out


def test_predict_through_an_alias(smoke_bundle, tmp_path, capsys):
    registry = tmp_path / "registry.json"
    promote(smoke_bundle, "champion", registry=registry)
    image = tmp_path / "scan.png"
    from PIL import Image

    Image.fromarray(np.full((28, 28), 120, np.uint8) + np.eye(28, dtype=np.uint8) * 60).save(image)
    out = tmp_path / "one.csv"
    assert main(["predict", "--model", "pneumoniamnist-smoke@champion", "--registry", str(registry), "--input",
                 str(image), "--output", str(out), "--use", "stacking"]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row["run_id"] == smoke_bundle.name and row["model"] == "stacking"
    assert row["predicted"] in ("normal", "pneumonia")


@pytest.mark.parametrize("ref, message", [
    ("nothing@champion", "no model named 'nothing'"),
    ("pneumoniamnist-smoke@staging", "has no alias 'staging'"),
    ("bad name@x", "is not <name>@<alias>"),
])
def test_bad_references_name_the_registry(smoke_bundle, tmp_path, ref, message):
    registry = tmp_path / "registry.json"
    promote(smoke_bundle, "champion", registry=registry)
    with pytest.raises(RegistryError, match=message):
        resolve(ref, registry)


def test_auto_promotion_rule(smoke_bundle, tmp_path):
    runs = tmp_path / "runs"
    registry = runs / "registry.json"
    champion = _copy(smoke_bundle, runs, "champion-run")
    first = auto_promote(champion, registry=registry)
    assert first["event"] == "promote" and "first model" in first["reason"]

    same = auto_promote(champion, registry=registry)
    assert same["outcome"] == "kept" and "already is the champion" in same["reason"]

    worse = auto_promote(_copy(smoke_bundle, runs, "worse-run", predictions="reversed"), registry=registry)
    assert worse["outcome"] == "kept" and worse["evidence"]["candidate_roc_auc"] < worse["evidence"]["champion_roc_auc"]
    assert "selection" in worse["evidence"]["basis"]  # says that the test split now chose between runs
    assert worse["evidence"]["difference_ci"][1] < 0 and "excludes 0" in worse["reason"]  # reversed: surely worse

    better = auto_promote(_copy(smoke_bundle, runs, "better-run", predictions="perfect"), registry=registry,
                          min_improvement=0.001)
    assert better["event"] == "promote" and better["evidence"]["candidate_roc_auc"] == 1.0
    low, high = better["evidence"]["difference_ci"]
    assert 0 < low <= 1.0 - better["evidence"]["champion_roc_auc"] <= high and "paired interval" in better["reason"]
    assert better["previous_run_id"] == "champion-run"
    assert resolve("pneumoniamnist-smoke@champion", registry).name == "better-run"

    other = auto_promote(_copy(smoke_bundle, runs, "other-data", predictions="perfect", fingerprint="0" * 64),
                         registry=registry)
    assert other["outcome"] == "not compared" and "different data" in other["reason"]
    assert resolve("pneumoniamnist-smoke@champion", registry).name == "better-run"

    recorded = [(e["run_id"], e["event"], e.get("outcome")) for e in history("pneumoniamnist-smoke", registry)]
    assert recorded == [
        ("champion-run", "promote", None), ("champion-run", "auto-promotion check", "kept"),
        ("worse-run", "auto-promotion check", "kept"), ("better-run", "promote", None),
        ("other-data", "auto-promotion check", "not compared"),
    ]


def test_the_flow_promotion_uses_the_one_rule_and_says_where(smoke_bundle, tmp_path, monkeypatch):
    """promote_run is what the flow's promote_if_better task runs: with --output-dir elsewhere and no registry.path,
    the promotion lands in the user's registry, where a command started from another folder finds it."""
    monkeypatch.delenv("MEDSTACK_REGISTRY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "elsewhere" / "runs"
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml",
                      {"runtime.output_dir": str(out), "registry.promote": "auto"})
    first = _copy(smoke_bundle, out, "first-run")
    event, registry = promote_run(first, cfg)
    assert event["event"] == "promote" and registry == tmp_path / "xdg" / "medstack" / "registry.json"
    assert registry.is_file() and not (out / "registry.json").exists()
    monkeypatch.chdir(tmp_path)
    assert resolve("pneumoniamnist-smoke@champion") == first
    assert describe_auto_promotion(first, cfg) == (
        "registry: pneumoniamnist-smoke@champion -> this run (first model registered as "
        f"pneumoniamnist-smoke@champion); recorded in {registry}")

    worse = _copy(smoke_bundle, out, "worse-run", predictions="reversed")
    assert promote_run(worse, cfg)[0]["outcome"] == "kept"
    line = describe_auto_promotion(worse, cfg)
    assert line.startswith("registry: pneumoniamnist-smoke@champion stays run first-run (kept: candidate test ROC AUC")
    assert line.endswith(f"; recorded in {registry}")
    assert describe_auto_promotion(first, cfg).startswith("registry: pneumoniamnist-smoke@champion -> this run")


def test_auto_promotion_is_seen_from_another_directory(smoke_bundle, smoke_registry_env, tmp_path, pneumonia_npz,
                                                       capsys, monkeypatch):
    """End to end: the session's smoke run (--output-dir in its own folder, registry.promote auto) promoted itself
    into the user's registry; `medstack models` (the console script) and `medstack predict --model name@champion`
    (the same command in this process, which has TensorFlow loaded already), started from another folder with
    nothing but the user's data folder to go on, see it."""
    from PIL import Image

    from test_bad_inputs import run_cli

    medstack = str(Path(sys.executable).with_name("medstack"))
    run_id = json.loads((smoke_bundle / "model.json").read_text())["run_id"]
    listed = subprocess.run([medstack, "models"], cwd=tmp_path, env=smoke_registry_env, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"pneumoniamnist-smoke@champion -> {run_id}" in listed.stdout

    images = np.load(pneumonia_npz)["test_images"][:3]
    inputs = tmp_path / "scans"
    inputs.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"scan-{i}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDSTACK_REGISTRY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", smoke_registry_env["XDG_DATA_HOME"])
    code, _, err, _ = run_cli(["predict", "--model", "pneumoniamnist-smoke@champion", "--input", str(inputs),
                               "--output", "out.csv"], capsys, monkeypatch)
    assert code == 0, err[-2000:]
    rows = pd.read_csv(tmp_path / "out.csv")
    assert len(rows) == 3 and set(rows["run_id"]) == {run_id}
