"""The one-network model (``student``, medstack.pipeline.student) of the session's smoke run: what it trained on,
where its decision and sets come from, and that every way of scoring it (fused graph, ``--engine student`` of
predict and serve-model, the export) gives the same probabilities. A run without one is
tests/test_flow_e2e.py's multi-class digits run (``distill.enabled: false``)."""

from __future__ import annotations

import io
import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medstack.config import array_sha, load_config
from medstack.inference.bundle import load_bundle
from medstack.run_folder import read_manifest, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def prepared(smoke_bundle):
    """The smoke run's data as it prepared it (its own config.yaml): splits, folds, the calibration slice."""
    from medstack import pipeline
    from medstack.data import read_dataset

    cfg = load_config(smoke_bundle / "config.yaml")
    dataset = read_dataset(cfg.data)
    return pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg), cfg


def test_the_student_trained_on_the_training_split_and_no_calibration_row(smoke_bundle, prepared):
    data, _ = prepared
    entry = read_manifest(smoke_bundle)["folds"]["student"]
    # Its training arrays, as the network saw them, are exactly the training split's rows and labels.
    assert entry["n_train"] == len(data.train_idx) == 360
    assert entry["train_inputs_sha"] == array_sha(data.images[data.train_idx], data.y_train)
    assert not set(data.cal_idx) & set(data.train_idx) and len(data.cal_idx) == 40


def test_its_views_are_distill_tta_and_only_its_cache_entry_depends_on_them(smoke_bundle, prepared):
    from medstack.config import apply_overrides
    from medstack.pipeline import fold_cache_key
    from medstack.pipeline.student import student_cache_key

    data, cfg = prepared
    folds = read_manifest(smoke_bundle)["folds"]
    assert cfg.distill.tta == "none" and folds["student"]["tta_views"] == 1  # one pass an image
    assert {entry["tta_views"] for key, entry in folds.items() if key != "student"} == {5}  # training.tta: auto
    auto = apply_overrides(cfg, {"distill.tta": "auto"})
    assert student_cache_key(data, auto, "v") != student_cache_key(data, cfg, "v")
    assert fold_cache_key(data, auto, "ldam", 0, "v") == fold_cache_key(data, cfg, "ldam", 0, "v")


def test_its_decision_and_sets_come_from_the_calibration_slice(smoke_bundle, prepared):
    """Recomputed from calibration_predictions.csv (the slice's rows) with the run's own rules: the same decision,
    the same conformal calibration and referral point as model.json holds."""
    from medstack.models.trust import fit_trust
    from medstack.pipeline.combine import decide
    from medstack.pipeline.trust import referral_rule

    data, cfg = prepared
    slice_ = pd.read_csv(smoke_bundle / "calibration_predictions.csv")
    assert sorted(slice_["row"]) == sorted(data.cal_idx.tolist())
    proba = slice_[["student:p(normal)", "student:p(pneumonia)"]].to_numpy()
    y = slice_["label"].to_numpy()
    run = SimpleNamespace(positive_class=data.positive_class, class_names=data.class_names)
    decision = decide(y, proba, run, cfg)
    bundle = load_bundle(smoke_bundle)
    assert bundle.decision("student") == pytest.approx(decision)
    calibration, point = fit_trust(y, proba, decision, kind="split", levels=cfg.conformal.levels,
                                   rule=referral_rule(cfg, data.class_names, data.positive_class))
    stored = bundle.meta["conformal"]["models"]["student"]
    assert stored["calibration"] == json.loads(json.dumps(calibration.to_dict()))  # scores rounded to 6 decimals
    assert stored["referral"] == json.loads(json.dumps(point))


def test_metrics_and_report_judge_it_against_the_recommended_model(smoke_bundle):
    metrics = read_metrics(smoke_bundle)
    student, recommended = metrics["student"], metrics["recommended"]["model"]
    assert student["compared_with"] == recommended
    paired = metrics["models"]["student"]["test_vs_recommended"]
    assert paired["model"] == recommended and paired["ci"][0] <= paired["roc_auc_difference"] <= paired["ci"][1]
    labels = pd.read_csv(smoke_bundle / "test_predictions.csv")
    assert 0.0 <= student["agreement"] <= 1.0 and len(labels) == 120
    assert student["can_replace"] == (paired["ci"][0] > -0.01 and
                                      student["ece"] <= student["best_member_ece"]["ece"] + 0.01)
    report = (smoke_bundle / "report.md").read_text()
    section = report.split("## One-network model (student)", 1)[1].split("\n## ", 1)[0]
    assert "all 360 training rows" in section and "40 rows of the calibration slice" in section
    assert ("**It can stand in for" if student["can_replace"] else f"**Keep {recommended}**") in section
    assert "| network passes an image | 1 | 40 |" in section  # distill.tta: none; 8 fold models x 5 views


# Starlette's TestClient (the app in this process, no server to start) warns that it still runs on httpx.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_every_way_of_scoring_the_student_gives_the_same_probabilities(smoke_bundle, tmp_path):
    """``--engine student`` (its network alone), the run's own test predictions, the exported .keras and SavedModel,
    and serve-model with ``--engine student``: equal within 1e-5. (The fused graph's student output equals the
    per-member path in tests/test_predict.py's export test.)"""
    import keras
    import tensorflow as tf
    from fastapi.testclient import TestClient

    from medstack.data import read_dataset
    from medstack.inference.fused import export_fused, make_scorer
    from medstack.serving.app import create_app
    from medstack.serving.model import ModelHolder, load_served

    bundle = load_bundle(smoke_bundle)
    cfg = load_config(smoke_bundle / "config.yaml")
    table = pd.read_csv(smoke_bundle / "test_predictions.csv")
    images = read_dataset(cfg.data).images[table["row"].to_numpy()[:24]]
    alone = make_scorer(bundle, "student")(images)
    assert list(alone) == ["student"]  # nothing else is computed
    alone = alone["student"]
    run_own = table[["student:p(normal)", "student:p(pneumonia)"]].to_numpy()[:24]
    np.testing.assert_allclose(alone, run_own, atol=1e-5)

    export_fused(bundle, tmp_path / "student.keras", tmp_path / "saved", engine="student")
    reloaded = keras.saving.load_model(tmp_path / "student.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(images.astype(np.float32))["student"]), alone, atol=1e-5)
    saved = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(saved.serve(tf.constant(images, tf.float32))["student"].numpy(), alone, atol=1e-5)

    holder = ModelHolder(smoke_bundle, loader=partial(load_served, engine="student"))
    assert holder.current.model == "student"
    png = io.BytesIO()
    Image.fromarray(images[0][..., 0]).save(png, format="PNG")
    with TestClient(create_app(holder)) as client:
        answer = client.post("/predict", files=[("files", ("a.png", png.getvalue(), "image/png"))]).json()
    [row] = answer["predictions"]
    assert list(row["models"]) == ["student"] and answer["model"] == "student"
    assert [row["models"]["student"][c] for c in bundle.classes] == pytest.approx(alone[0], abs=1e-5)


def test_engine_student_refuses_another_model(smoke_bundle):
    from medstack.inference.schema import BundleError

    bundle = load_bundle(smoke_bundle)
    assert bundle.model_for(None, "student") == "student" and bundle.model_for("stacking") == "stacking"
    with pytest.raises(BundleError, match="--engine student scores only the student, not 'stacking'"):
        bundle.model_for("stacking", "student")
