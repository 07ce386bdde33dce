"""Using a trained ensemble: model.json, the loader, `medstack predict`, the fused export, drift, bad input.

Everything runs against one real smoke run (the session fixture ``smoke_bundle``)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medstack.cli import main
from medstack.inference.bundle import BundleError, load_bundle
from medstack.inference.fused import MemberScorer, export_fused, make_scorer
from medstack.inference.inputs import InputError
from medstack.inference.predict import predict

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def bundle(smoke_bundle):
    return load_bundle(smoke_bundle)


@pytest.fixture(scope="module")
def test_images(smoke_bundle, pneumonia_npz):
    """The run's own test images (rows of test_predictions.csv) and that file."""
    from medstack.data.npz import load_npz

    frame = pd.read_csv(smoke_bundle / "test_predictions.csv")
    images = load_npz(pneumonia_npz, "pneumoniamnist").images[frame["row"].to_numpy()]
    return images, frame


@pytest.fixture(scope="module")
def png_folder(test_images, tmp_path_factory):
    images, frame = test_images
    folder = tmp_path_factory.mktemp("pngs") / "incoming" / "nested"
    folder.mkdir(parents=True)
    for row, pixels in zip(frame["row"], images):
        Image.fromarray(pixels[..., 0]).save(folder / f"row{row:05d}.png")
    return folder.parent


def _probability_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if ":p(" in c]


def test_model_json_describes_the_run(smoke_bundle):
    meta = json.loads((smoke_bundle / "model.json").read_text())
    metrics = json.loads((smoke_bundle / "metrics.json").read_text())
    assert meta["schema_version"] == 3 and meta["run_id"] == smoke_bundle.name
    assert meta["stacking"]["inputs"] == "log_odds"
    assert meta["classes"] == metrics["dataset"]["classes"] and meta["positive_class"]["name"] == "pneumonia"
    assert meta["input"]["shape"] == [28, 28, 1] and meta["input"]["color_mode"] == "L"
    assert meta["models"] == ["ldam", "class_weight", "smote", "custom_loss", "soft_voting", "stacking", "student"]
    for strategy, spec in meta["members"].items():
        assert [f["file"] for f in spec["folds"]] == [f"models/{strategy}/fold-{k}.keras" for k in (1, 2)]
        assert all(f["temperature"] > 0 and len(f["sha256"]) == 64 for f in spec["folds"])
    assert meta["decisions"] == {name: m["decision"] for name, m in metrics["models"].items()}
    assert meta["recommended"] == metrics["recommended"]
    # The meta-model as plain numbers equals the fitted scikit-learn model the run saved.
    from medstack.models.ensemble import StackingMetaModel

    fitted = StackingMetaModel.load(smoke_bundle / "models" / "meta_model.joblib")
    assert meta["stacking"]["features"] == fitted.model_names_
    np.testing.assert_array_equal(meta["stacking"]["coef"], fitted.estimator_.coef_)
    np.testing.assert_array_equal(meta["stacking"]["intercept"], fitted.estimator_.intercept_)
    stats = meta["training_statistics"]
    assert stats["shape"] == [28, 28, 1] and stats["n_images"] == sum(metrics["dataset"]["counts"]["train"].values())


def test_predict_cli_on_png_files_reproduces_test_predictions(smoke_bundle, png_folder, test_images, tmp_path, capsys):
    """Identity check: the run's test images as PNG files, through `medstack predict`, give test_predictions.csv."""
    _, expected = test_images
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(smoke_bundle), "--input", str(png_folder), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"scored {len(expected)} image(s)" in err and "predicted: normal" in err
    got = pd.read_csv(out)
    assert f"referred to a person: {int(got['refer'].sum())} of {len(expected)}" in err and "note:" not in err
    got = pd.read_csv(out)
    assert list(got.columns[:1]) == ["input"] and _probability_columns(got) == _probability_columns(expected)
    got["row"] = got["input"].str.extract(r"row(\d+)\.png$")[0].astype(int)
    merged = expected.merge(got, on="row", suffixes=("", "_predicted"))
    assert len(merged) == len(expected)
    for column in _probability_columns(expected):
        np.testing.assert_allclose(merged[f"{column}_predicted"], merged[column], atol=1e-4, err_msg=column)
    # The label is the recommended model's, under its own decision from metrics.json.
    bundle = load_bundle(smoke_bundle)
    from medstack.models.decision import apply_decision

    model = bundle.recommended
    proba = merged[[f"{model}:p({c})" for c in bundle.classes]].to_numpy()
    expected_labels = [bundle.classes[i] for i in apply_decision(proba, bundle.decision(model))]
    assert merged["predicted"].tolist() == expected_labels
    assert set(got["model"]) == {model} and set(got["run_id"]) == {smoke_bundle.name}


def test_predict_npz_inputs(bundle, test_images, tmp_path):
    """npz inputs are read in chunks: a plain ``images`` npz of the test images gives test_predictions.csv; a
    MedMNIST-layout npz numbers its rows train, val, test as training does."""
    images, expected = test_images
    plain = tmp_path / "test_images.npz"
    np.savez_compressed(plain, images=images[..., 0])
    out = tmp_path / "plain.csv"
    summary = predict(bundle, plain, out, batch_size=32)
    got = pd.read_csv(out)
    assert summary.scored == len(got) == len(expected)
    assert got["input"].tolist() == [f"{plain}:{i}" for i in range(len(expected))]
    for column in _probability_columns(expected):
        np.testing.assert_allclose(got[column], expected[column], atol=1e-4, err_msg=column)
    _assert_trust_columns(bundle, got, expected)
    assert summary.referred == int(got["refer"].sum()) and summary.notes == []
    medmnist = tmp_path / "medmnist.npz"
    parts = {"train": images[:7], "val": images[7:10], "test": images[10:15]}
    np.savez(medmnist, **{f"{k}_images": v for k, v in parts.items()},
             **{f"{k}_labels": np.zeros((len(v), 1), np.uint8) for k, v in parts.items()})
    predict(bundle, medmnist, tmp_path / "medmnist.csv", batch_size=4)
    got = pd.read_csv(tmp_path / "medmnist.csv")
    assert got["input"].tolist() == [f"{medmnist}:{i}" for i in range(15)]
    np.testing.assert_allclose(got[_probability_columns(expected)], expected[_probability_columns(expected)][:15],
                               atol=1e-4)


def _assert_trust_columns(bundle, got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """predict's sets, p-values and referral are exactly what model.json's calibration gives for predict's own
    probabilities, and the sets recomputed from test_predictions.csv agree except where a score lies within the
    fused graph's float32 rounding (1e-4) of a class's set threshold."""
    from medstack.inference.trust import read_trust

    model = bundle.recommended
    classes = bundle.classes
    calibration, point = read_trust(bundle.meta, model)
    mine = got[[f"{model}:p({c})" for c in classes]].to_numpy()
    trust = bundle.trust(model, mine)
    for level in calibration.levels:
        column = f"set_{round(level * 100):g}"
        assert got[column].tolist() == trust.columns()[column]
        from_run = calibration.prediction_sets(expected[[f"{model}:p({c})" for c in classes]].to_numpy(), level)
        differ = np.flatnonzero((from_run != trust.sets[level]).any(axis=1))
        thresholds = np.array([np.nan if t is None else t for t in calibration.score_thresholds(level)])
        near = np.abs((1 - mine) - thresholds).min(axis=1, initial=np.inf, where=~np.isnan(thresholds)) <= 1e-4
        assert set(differ) <= set(np.flatnonzero(near)), (level, differ)
        assert all(text.startswith("{") and text.endswith("}") for text in got[column])
    np.testing.assert_allclose(got[[f"p_value:{c}" for c in classes]].to_numpy(), trust.p_values, rtol=1e-8)  # %.9g
    assert got["refer"].tolist() == trust.refer.tolist()
    assert got["refer_reason"].fillna("").tolist() == trust.reasons
    assert point["rule"] == "set" and all(r.endswith("at 90%") for r in got["refer_reason"].dropna())


def test_model_json_calibration_is_what_the_runs_calibration_rows_give(smoke_bundle):
    """model.json's conformal section, refitted from calibration_predictions.csv (the slice every model predicted
    as it predicts test) and each model's decision, is the same to the last number, referral point included."""
    from medstack.models.trust import fit_trust
    from medstack.run_folder import read_calibration_predictions, read_metrics

    meta = json.loads((smoke_bundle / "model.json").read_text())
    rows = read_calibration_predictions(smoke_bundle)
    section, setup = meta["conformal"], read_metrics(smoke_bundle)["conformal"]
    assert section["kind"] == setup["kind"] == "split" and section["calibration_rows"] == len(rows.rows) == 40
    assert setup["calibration_counts"] == dict(zip(meta["classes"], np.bincount(rows.labels).tolist()))
    assert meta["data"]["counts"]["calibration"] == setup["calibration_counts"]
    assert not set(rows.rows) & set(pd.read_csv(smoke_bundle / "oof_predictions.csv")["row"])
    assert set(section["models"]) == set(meta["models"]) == set(rows.probas)
    for model, stored in section["models"].items():
        calibration, point = fit_trust(rows.labels, rows.probas[model], meta["decisions"][model], kind="split",
                                       levels=setup["levels"], rule=setup["referral"])
        assert calibration.to_dict() == stored["calibration"], model
        assert json.loads(json.dumps(point)) == stored["referral"], model
    # At the smoke size the rare class (normal) has 10 calibration rows: 90% is served, 95% refused for it.
    refused = {entry["level"]: entry["unavailable"] for entry in section["models"]["stacking"]["calibration"]["per_level"]}
    assert refused == {0.9: [], 0.95: [0]}


def test_bundles_without_conformal_calibration_still_predict(bundle, smoke_bundle, test_images, tmp_path):
    """A bundle written before conformal calibration: no set, p-value or referral columns, and a note saying so."""
    from medstack.inference.trust import NO_TRUST

    copy = tmp_path / "old"
    shutil.copytree(smoke_bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    del meta["conformal"]
    (copy / "model.json").write_text(json.dumps(meta))
    old = load_bundle(copy)
    images, _ = test_images
    np.savez(tmp_path / "few.npz", images=images[:6, ..., 0])
    summary = predict(old, tmp_path / "few.npz", tmp_path / "old.csv", scorer=make_scorer(bundle))
    got = pd.read_csv(tmp_path / "old.csv")
    assert summary.scored == 6 and summary.referred is None and summary.notes == [NO_TRUST]
    assert not [c for c in got.columns if c.startswith(("set_", "p_value:", "refer"))]
    assert old.trust(old.recommended, np.full((2, 2), 0.5)) is None


def test_fused_model_and_its_exports_equal_the_per_member_path(bundle, test_images, tmp_path):
    import keras
    import tensorflow as tf

    images, _ = test_images
    rng = np.random.default_rng(0)
    x = np.concatenate([images, rng.integers(0, 256, size=(16, 28, 28, 1), dtype=np.uint8)])
    reference = make_scorer(bundle, "members")(x)
    fused = make_scorer(bundle)(x)  # predict's own scorer, built and traced once per loaded bundle:
    assert make_scorer(bundle) is make_scorer(bundle) and make_scorer(bundle, "members") is not make_scorer(bundle)
    assert list(fused) == bundle.models
    # 5 test-time views: the scorers send 51 rows a call (255 images through a network), the exports all rows at once
    assert make_scorer(bundle).rows == make_scorer(bundle, "members").rows == 256 // 5 < len(x)
    model = export_fused(bundle, tmp_path / "ensemble.keras", tmp_path / "saved_model")
    reloaded = keras.saving.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    # Called plainly, as a user would: the fold models' random augmentation layers must stay off without
    # training=False (they switch on in a loaded fold model called with training=None).
    from_file = reloaded(x.astype(np.float32))
    saved = tf.saved_model.load(str(tmp_path / "saved_model"))  # kept referenced: its variables die with it
    served = saved.serve(tf.constant(x, tf.float32))
    assert set(saved.signatures) == {"serve", "serving_default"} and len(saved.variables) == len(model.variables)
    assert len([layer for layer in model.layers if isinstance(layer, keras.Model)]) == 9  # 4 x 2 folds, the student
    for name in bundle.models:
        for other in (fused[name], np.asarray(from_file[name]), np.asarray(served[name])):
            np.testing.assert_allclose(other, reference[name], atol=1e-5, err_msg=name)


def test_loading_a_bundle_runs_no_pickle(smoke_bundle, tmp_path, monkeypatch):
    import joblib

    copy = tmp_path / "run"
    shutil.copytree(smoke_bundle, copy)
    (copy / "models" / "meta_model.joblib").unlink()  # the joblib export is never what predict reads

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a bundle")

    for module, name in ((pickle, "load"), (pickle, "loads"), (joblib, "load"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    bundle = load_bundle(copy)
    scores = MemberScorer(bundle)(np.zeros((2, 28, 28, 1), np.uint8))
    assert set(scores) == set(bundle.models) and np.allclose(scores["stacking"].sum(axis=1), 1.0)


def _broken_copy(smoke_bundle: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / how
    shutil.copytree(smoke_bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    if how == "schema":
        meta["schema_version"] = 99
    elif how == "major":
        meta["medstack_version"] = "7.0.0"
    elif how == "missing":
        (copy / "models" / "smote" / "fold-2.keras").unlink()
    elif how == "corrupt":
        path = copy / "models" / "ldam" / "fold-1.keras"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.unlink()  # the run's file may be a hard link into the fold cache: never write through it
        path.write_bytes(bytes(data))
    elif how == "no_inputs":
        del meta["stacking"]["inputs"]
    elif how == "edited_calibration":
        scores = meta["conformal"]["models"]["stacking"]["calibration"]["scores"]
        scores[1] = [s / 2 for s in scores[1]]  # still sorted; its stored thresholds no longer follow
    elif how == "not_json":
        (copy / "model.json").write_text("{ not json")
        return copy
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


def test_schema_1_bundles_still_load_and_stack_probabilities(smoke_bundle, tmp_path):
    copy = tmp_path / "v1"
    shutil.copytree(smoke_bundle, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["schema_version"] = 1
    del meta["stacking"]["inputs"]  # version 1 stacked probabilities and did not say so
    (copy / "model.json").write_text(json.dumps(meta))
    assert load_bundle(copy).stacking.inputs == "probabilities"


@pytest.mark.parametrize("how, message", [
    ("schema", r"model\.json: bundle schema version 99"),
    ("major", r"model\.json: written by medstack 7\.0\.0, major version 7"),
    ("missing", r"smote/fold-2\.keras: model file is missing"),
    ("corrupt", r"ldam/fold-1\.keras: model file is corrupt"),
    ("not_json", r"model\.json: not readable JSON"),
    ("no_inputs", r"model\.json: stacking meta-model is malformed: schema version 2 names the meta-model's inputs"),
    ("edited_calibration", r"model\.json: conformal calibration is malformed: .*per_level fields do not match"),
])
def test_bad_bundles_fail_naming_the_file(smoke_bundle, tmp_path, how, message):
    with pytest.raises(BundleError, match=message):
        load_bundle(_broken_copy(smoke_bundle, tmp_path, how)).member_models()


def test_drift_warnings_fire_for_colour_16_bit_and_black_frames(bundle, test_images, tmp_path):
    images, _ = test_images
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(images[0][..., 0]).save(folder / "a_normal.png")
    rng = np.random.default_rng(1)
    colour = np.stack([images[1][..., 0], rng.integers(0, 256, (28, 28)), np.zeros((28, 28))], -1).astype(np.uint8)
    Image.fromarray(colour, "RGB").save(folder / "b_colour_photo.png")
    Image.fromarray(images[2][..., 0].astype(np.uint16) * 257).save(folder / "c_16bit.png")  # I;16
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "d_black.png")
    Image.fromarray(rng.integers(0, 256, (512, 64), dtype=np.uint8)).save(folder / "e_tall_strip.png")
    out = tmp_path / "odd.csv"
    summary = predict(bundle, folder, out)
    warnings = dict(zip(pd.read_csv(out)["input"].map(lambda p: Path(p).name), pd.read_csv(out)["warnings"].fillna("")))
    assert warnings["a_normal.png"] == ""
    assert "colour image converted to grayscale" in warnings["b_colour_photo.png"]
    assert "16-bit" in warnings["c_16bit.png"]
    assert "uniform image" in warnings["d_black.png"]
    assert "aspect ratio 64x512" in warnings["e_tall_strip.png"]
    assert summary.warned_inputs == 4 and {"colour", "bit depth", "uniform", "aspect ratio"} <= set(summary.warnings)


def test_bad_images_error_or_are_skipped_and_listed(bundle, test_images, tmp_path, capsys):
    images, _ = test_images
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(images[0][..., 0]).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match=r"broken\.png: unreadable image"):
        predict(bundle, folder, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()  # never a half-written output
    csv_list = tmp_path / "list.csv"
    csv_list.write_text("path\nmixed/good.png\nmixed/broken.png\nmixed/absent.png\n")
    assert main(["predict", "--model", str(bundle.root), "--input", str(csv_list), "--output",
                 str(tmp_path / "out.parquet"), "--on-bad-image", "skip"]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err and "absent.png: file not found" in err
    assert pd.read_parquet(tmp_path / "out.parquet")["input"].tolist() == [str(tmp_path / "mixed" / "good.png")]
    skipped = pd.read_csv(tmp_path / "out.parquet.skipped.csv")
    assert [Path(p).name for p in skipped["input"]] == ["broken.png", "absent.png"]


def test_predict_cli_errors_name_the_input(smoke_bundle, tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--output", "x.csv"]) == 2
    assert f"{tmp_path}/model.json: not found" in capsys.readouterr().err
    bad = tmp_path / "plain.npz"
    np.savez(bad, images=np.zeros((3, 32, 32), np.uint8))
    assert main(["predict", "--model", str(smoke_bundle), "--input", str(bad), "--output", str(tmp_path / "o.csv")]) == 2
    assert "plain.npz: key 'images' holds uint8 images of shape (3, 32, 32)" in capsys.readouterr().err
    assert main(["predict", "--model", str(smoke_bundle), "--input", str(bad), "--output", str(tmp_path / "o.txt")]) == 2
    assert "must end in .csv or .parquet" in capsys.readouterr().err
