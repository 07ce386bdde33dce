"""The plain pipeline functions, with real (tiny) CNN trainings on bundled digits. No Prefect."""

from __future__ import annotations

import dataclasses
import shutil
import sys

import numpy as np
import pytest

from medstack import pipeline
from medstack.config import RunConfig
from medstack.data import Dataset, load_digits_dataset
from medstack.pipeline import FoldCache
from medstack.models.training import CNNClassifier
from conftest import spy_on_training

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def imbalanced_digits() -> Dataset:
    """'zero' (rare, ~1:4) vs 'other' from the bundled digits: 8x8 gray, offline, trains in a second."""
    digits = load_digits_dataset()
    rng = np.random.default_rng(0)
    zeros = np.flatnonzero(digits.labels == 0)[:60]
    others = rng.choice(np.flatnonzero(digits.labels != 0), 240, replace=False)
    rows = np.sort(np.concatenate([zeros, others]))
    return Dataset(
        name="digits-zero",
        images=digits.images[rows],
        labels=(digits.labels[rows] != 0).astype(np.int64),  # 0 = zero (rare), 1 = other
        class_names=("zero", "other"),
        official_split=None,
        sources=None,
    )


@pytest.fixture
def cfg(tiny_config_dict) -> RunConfig:
    return RunConfig.model_validate(tiny_config_dict)


@dataclasses.dataclass
class Baseline:
    """The module's one training of every strategy x fold (4 x 2) of the tiny config, into one fold cache."""

    cfg: RunConfig
    prepared: object
    cache: FoldCache
    results: list
    trained: list[str]  # strategies in the order CNNClassifier.fit ran while the baseline trained
    inputs: list  # (x_train, x_val) of every one of those trainings
    label_readers: list[str]  # functions that revealed the sealed test labels while it trained


@pytest.fixture(scope="module")
def baseline(imbalanced_digits, make_tiny_config, tmp_path_factory) -> Baseline:
    """Trained once for the tests that need the whole grid; each test that changes something trains only that."""
    base = tmp_path_factory.mktemp("baseline")
    cfg = RunConfig.model_validate(make_tiny_config(base))
    prepared = pipeline.prepare_folds(imbalanced_digits, pipeline.split_rows(imbalanced_digits, cfg), cfg)
    cache = FoldCache(base / "c")
    with spy_on_training() as seen:
        results = _train_all(prepared, cfg, cache)
    return Baseline(cfg, prepared, cache, results, seen["trained"], seen["inputs"], seen["label_readers"])


@pytest.fixture
def training_counter(monkeypatch):
    """Counts real CNN trainings by strategy (wraps the real fit, does not replace it)."""
    calls: list[str] = []
    real_fit = CNNClassifier.fit

    def counting_fit(self, *args, **kwargs):
        calls.append(self.strategy)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(CNNClassifier, "fit", counting_fit)
    return calls


class _Refuse:
    """A meta-path finder that fails the import of one module."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, name, path=None, target=None):
        if name == self.name:
            raise AssertionError(f"{name} was imported")
        return None


def _train_all(prepared, cfg, cache):
    version = pipeline.code_version()
    return [
        pipeline.train_one_fold(prepared, cfg, s, k, cache, version)
        for s in cfg.strategies
        for k in range(cfg.split.folds)
    ]


def test_oof_rows_come_from_the_one_model_that_never_saw_them(baseline):
    prepared, results, cfg = baseline.prepared, baseline.results, baseline.cfg
    for r in results:
        trained_on = prepared.train_idx[prepared.fold_of != r.fold]
        assert not set(r.oof_index) & set(trained_on)
        assert not set(r.oof_index) & (set(prepared.val_idx) | set(prepared.test_idx))
        assert r.test_proba.shape == (len(prepared.test_idx), 2)
    preds = pipeline.gather_predictions(prepared, results)
    for strategy in cfg.strategies:
        oof = preds.oof[strategy]
        assert oof.shape == (len(prepared.train_idx), 2) and np.allclose(oof.sum(axis=1), 1)
        for r in (r for r in results if r.strategy == strategy):
            rows = np.searchsorted(prepared.train_idx, r.oof_index)
            assert np.array_equal(oof[rows], r.oof_proba)
    assert sorted(baseline.trained) == sorted(s for s in cfg.strategies for _ in range(cfg.split.folds))


def test_gather_refuses_overlapping_or_missing_folds(baseline):
    prepared = baseline.prepared
    results = [dataclasses.replace(r) for r in baseline.results if r.strategy == "class_weight"]
    with pytest.raises(ValueError, match=r"expected folds 0..1, got \[0\]"):
        pipeline.gather_predictions(prepared, results[:1])
    results[1].oof_index = results[0].oof_index
    results[1].oof_proba = results[0].oof_proba
    with pytest.raises(ValueError, match="predicted rows it was trained on"):
        pipeline.gather_predictions(prepared, results)


def test_cache_hit_retrains_nothing_and_one_changed_strategy_retrains_only_itself(baseline, tmp_path, training_counter):
    prepared, cfg, first = baseline.prepared, baseline.cfg, baseline.results
    cache = FoldCache(tmp_path / "c")  # a copy of the baseline's cache: this test adds entries of its own
    shutil.copytree(baseline.cache.root, cache.root)
    assert len(baseline.trained) == 8 and not any(r.from_cache for r in first)

    with pytest.MonkeyPatch.context() as mp:  # a cache hit loads no TensorFlow: the training module is not imported
        mp.delitem(sys.modules, "medstack.models.training")
        mp.setattr(sys, "meta_path", [_Refuse("medstack.models.training"), *sys.meta_path])
        again = _train_all(prepared, cfg, cache)
    assert len(training_counter) == 0  # nothing retrained
    assert all(r.from_cache for r in again)
    assert all(np.array_equal(a.test_proba, b.test_proba) for a, b in zip(first, again))

    # The meta-model and report settings are not part of any fold's key.
    changed_meta = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"inner_folds": 4}), "report": cfg.report.model_copy(update={"bootstrap": 7})})
    _train_all(prepared, changed_meta, cache)
    assert len(training_counter) == 0

    changed_smote = cfg.model_copy(update={"strategies": {**cfg.strategies, "smote": {"k_neighbors": 2}}})
    version = pipeline.code_version()
    # Re-scoring a finished run reads its folds without training; a fold this config never trained is an error.
    assert [r.cache_key for r in pipeline.cached_folds(prepared, cfg, cache, version)] == [r.cache_key for r in first]
    with pytest.raises(LookupError, match="smote fold 1: not in the fold cache"):
        pipeline.cached_folds(prepared, changed_smote, cache, version)
    assert len(training_counter) == 0
    _train_all(prepared, changed_smote, cache)
    assert training_counter == ["smote", "smote"]


def test_code_version_covers_what_training_imports_and_not_the_ensembles():
    """A change to the meta-model or the decisions must not retrain every fold; a change to how folds train must.
    (That every module a fresh interpreter loads with the training module is in this set is checked by
    tests/test_layout.py's fresh interpreter.)"""
    modules = pipeline.train.training_modules()
    assert {"training", "network", "recipe", "strategies", "losses", "smote", "calibration"} <= modules
    assert not modules & {"ensemble", "decision", "metrics"}


def test_changed_data_retrains_every_fold(imbalanced_digits, baseline, tmp_path, training_counter):
    """What the weekly retrain relies on: unchanged data is served from the cache, one changed pixel is not.
    One strategy (2 folds) stands for all: every fold key holds the data fingerprint."""
    cache = FoldCache(tmp_path / "c")
    shutil.copytree(baseline.cache.root, cache.root)
    cfg = baseline.cfg.model_copy(update={"strategies": {"class_weight": {}}})
    prepared = pipeline.prepare_folds(imbalanced_digits, pipeline.split_rows(imbalanced_digits, cfg), cfg)
    assert all(r.from_cache for r in _train_all(prepared, cfg, cache)) and training_counter == []

    images = imbalanced_digits.images.copy()
    images[0, 0, 0, 0] ^= 1  # one pixel of one image, labels and everything else unchanged
    changed = dataclasses.replace(imbalanced_digits, images=images)
    prepared_changed = pipeline.prepare_folds(changed, pipeline.split_rows(changed, cfg), cfg)
    assert prepared_changed.fingerprint != prepared.fingerprint
    retrained = _train_all(prepared_changed, cfg, cache)
    assert training_counter == ["class_weight", "class_weight"] and not any(r.from_cache for r in retrained)


def test_ensembles_thresholds_and_the_sealed_test_labels(imbalanced_digits, baseline, monkeypatch):
    prepared, cfg = baseline.prepared, baseline.cfg
    with pytest.raises(TypeError, match="sealed"):
        np.asarray(prepared.test_labels) + 0
    readers: list[str] = []
    real_reveal = pipeline.SealedLabels.reveal

    def spying_reveal(self):
        import sys

        readers.append(sys._getframe(1).f_code.co_name)
        return real_reveal(self)

    monkeypatch.setattr(pipeline.SealedLabels, "reveal", spying_reveal)
    assert baseline.label_readers == []  # the baseline's 8 trainings never opened the test labels
    preds = pipeline.gather_predictions(prepared, _train_all(prepared, cfg, baseline.cache))  # from the cache
    ensembles = pipeline.fit_ensembles(prepared, preds, cfg)
    assert readers == []  # training, OOF, meta-model and thresholds never opened the test labels
    assert set(ensembles.predictions.test) == {"ldam", "class_weight", "smote", "custom_loss", "soft_voting", "stacking"}
    assert "soft_voting" not in preds.test  # the caller's predictions are left as they were
    assert all(0.0 <= t <= 1.0 for t in ensembles.thresholds.values())
    metrics = pipeline.evaluate_on_test(prepared, ensembles, cfg)
    assert readers == ["evaluate_on_test"]
    assert set(metrics["models"]) == set(ensembles.predictions.test)
    stacking = metrics["models"]["stacking"]
    assert stacking["test"]["threshold"] == ensembles.thresholds["stacking"]
    assert sum(map(sum, stacking["test"]["confusion_matrix"])) == len(prepared.test_idx)
    assert metrics["dataset"]["counts"]["test"] == dict(zip(("zero", "other"), np.bincount(imbalanced_digits.labels[prepared.test_idx]).tolist()))
    chosen = metrics["recommended"]["model"]
    assert "test_vs_recommended" not in metrics["models"][chosen]
    for name, result in metrics["models"].items():
        if name != chosen:  # every other model paired with the recommended one on the same test rows
            paired = result["test_vs_recommended"]
            gap = result["test"]["roc_auc"] - metrics["models"][chosen]["test"]["roc_auc"]
            assert paired["model"] == chosen and paired["roc_auc_difference"] == pytest.approx(gap)
            assert paired["ci"][0] <= paired["ci"][1]


def test_the_calibration_slice_reaches_no_fit_and_calibrates_every_model(imbalanced_digits, baseline, monkeypatch):
    """conformal.calibration split (the default): a stratified slice of train, disjoint from the folds, val and
    test; no training fits or early-stops on its images, the meta-model and decisions learn from OOF rows only, and
    every model's conformal calibration is exactly the one its calibration-row predictions give."""
    from medstack.models.conformal import fit_conformal
    from medstack.models.ensemble import StackingMetaModel

    prepared, cfg = baseline.prepared, baseline.cfg
    cal = prepared.cal_idx
    labels = imbalanced_digits.labels
    assert len(cal) == pytest.approx(0.1 * (len(cal) + len(prepared.train_idx)), abs=2)
    assert abs(labels[cal].mean() - labels[prepared.train_idx].mean()) < 0.06  # stratified
    assert not set(cal) & (set(prepared.train_idx) | set(prepared.val_idx) | set(prepared.test_idx))
    assert np.array_equal(prepared.y_cal, labels[cal]) and prepared.counts["calibration"]["zero"] > 0
    cal_images = {imbalanced_digits.images[i].tobytes() for i in cal}  # exact duplicates share a side, so pixels tell
    assert len(baseline.inputs) == 8
    for x_train, x_val in baseline.inputs:
        assert not cal_images & {x.tobytes() for x in np.asarray(x_train)}
        assert not cal_images & {x.tobytes() for x in np.asarray(x_val)}
    assert all(r.cal_proba.shape == (len(cal), 2) for r in baseline.results)

    fitted_on: list[int] = []
    real_fit = StackingMetaModel.fit
    monkeypatch.setattr(StackingMetaModel, "fit", lambda self, oof, y: fitted_on.append(len(y)) or real_fit(self, oof, y))
    ensembles = pipeline.fit_ensembles(prepared, pipeline.gather_predictions(prepared, baseline.results), cfg)
    assert fitted_on == [len(prepared.train_idx)]  # the OOF rows, never the slice
    preds = ensembles.predictions
    assert set(ensembles.conformal) == set(ensembles.decisions) == set(preds.cal)
    stacked = ensembles.meta_model.predict_proba_per_fold({s: preds.cal_folds[s] for s in cfg.strategies})
    np.testing.assert_array_equal(preds.cal["stacking"], stacked)  # the stack predicts the slice as it does test
    for name, calibration in ensembles.conformal.items():
        assert calibration.kind == "split" and calibration.counts.sum() == len(cal)
        assert calibration.to_dict() == fit_conformal(prepared.y_cal, preds.cal[name], kind="split",
                                                      levels=cfg.conformal.levels).to_dict()
        assert ensembles.referral[name]["on_calibration"]["n"] == len(cal)


def test_drw_switch_happens_at_the_configured_epoch(imbalanced_digits, cfg):
    x, y = imbalanced_digits.images[:200], imbalanced_digits.labels[:200]
    params = cfg.strategy_params("ldam").model_copy(update={"drw_epoch": 2})
    training = cfg.training.model_copy(update={"epochs": 3, "patience_steps": 500})
    clf = CNNClassifier("ldam", params, 2, cfg.model, None, training, seed=1).fit(x, y, x[:40], y[:40])
    assert clf.history_["loss_phase"] == [0, 0, 1]
    phases = clf.info_["loss_phases"]
    assert [p["epoch"] for p in phases] == [0, 2]
    assert phases[0]["loss"]["class_weights"] is None and phases[1]["loss"]["class_weights"] is not None


def test_saved_model_reloads_in_safe_mode_and_predicts_the_same(imbalanced_digits, cfg, tmp_path):
    x, y = imbalanced_digits.images[:120], imbalanced_digits.labels[:120]
    clf = CNNClassifier("custom_loss", cfg.strategy_params("custom_loss"), 2, cfg.model, cfg.augmentation, cfg.training).fit(x, y, x[:30], y[:30])
    clf.save(tmp_path / "m.keras")
    again = CNNClassifier.load(tmp_path / "m.keras")
    assert np.allclose(again.predict_proba(x), clf.predict_proba(x), atol=1e-6)


def test_smote_sees_exactly_the_training_part_of_each_fold(imbalanced_digits, cfg, tmp_path, monkeypatch):
    import medstack.models.strategies as strategies

    seen: list[np.ndarray] = []
    real = strategies.smote_resample

    def spying_smote(x, y, k_neighbors, seed):
        seen.append(x.copy())
        return real(x, y, k_neighbors, seed)

    monkeypatch.setattr(strategies, "smote_resample", spying_smote)
    cfg1 = cfg.model_copy(update={"strategies": {"smote": {"k_neighbors": 3}}})
    prepared = pipeline.prepare_folds(imbalanced_digits, pipeline.split_rows(imbalanced_digits, cfg1), cfg1)
    results = _train_all(prepared, cfg1, FoldCache(tmp_path / "c"))
    assert len(seen) == 2
    for fold, x_seen in enumerate(seen):
        training_rows = prepared.train_idx[prepared.fold_of != fold]
        assert np.array_equal(x_seen, imbalanced_digits.images[training_rows])
        assert results[fold].info["n_synthetic"] > 0
        assert results[fold].info["n_train"] == len(training_rows)


def test_two_runs_training_the_same_fold_at_once_share_the_cache(imbalanced_digits, cfg, tmp_path, training_counter):
    from concurrent.futures import ThreadPoolExecutor

    cfg1 = cfg.model_copy(update={"strategies": {"class_weight": {}}})
    prepared = pipeline.prepare_folds(imbalanced_digits, pipeline.split_rows(imbalanced_digits, cfg1), cfg1)
    cache = FoldCache(tmp_path / "c")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: pipeline.train_one_fold(prepared, cfg1, "class_weight", 0, cache, "v"), range(2)))
    assert results[0].cache_key == results[1].cache_key
    entries = list((tmp_path / "c" / "folds").iterdir())
    assert [e.name for e in entries] == [results[0].cache_key]  # one whole entry, no temporaries left
    assert cache.load(results[0].cache_key) is not None


def test_same_seed_same_splits_folds_and_smote_samples(imbalanced_digits, cfg):
    from medstack.models.strategies import smote_resample

    a = pipeline.prepare_folds(imbalanced_digits, pipeline.split_rows(imbalanced_digits, cfg), cfg)
    b = pipeline.prepare_folds(imbalanced_digits, pipeline.split_rows(imbalanced_digits, cfg), cfg)
    assert a.fingerprint == b.fingerprint and np.array_equal(a.fold_of, b.fold_of)
    fold = a.fold_data(0)
    seed = pipeline.fold_seed(cfg.seed, "smote", 0)
    assert np.array_equal(smote_resample(fold.x_train, fold.y_train, 5, seed)[0], smote_resample(fold.x_train, fold.y_train, 5, seed)[0])
    other = cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": cfg.split.seed + 1})})
    c = pipeline.prepare_folds(imbalanced_digits, pipeline.split_rows(imbalanced_digits, other), other)
    assert c.fingerprint != a.fingerprint


def test_multiclass_decisions_are_offsets_chosen_on_oof(cfg, tmp_path):
    """K > 2 end to end through the plain stages: every model gets an OOF-chosen offsets decision, recorded in the
    metrics with the recommendation, and the test labels follow it."""
    from medstack.models.decision import apply_decision

    digits = load_digits_dataset()
    keep = np.concatenate([np.flatnonzero(digits.labels == d)[:n] for d, n in ((1, 150), (7, 50), (4, 25))])
    labels = np.searchsorted([1, 4, 7], digits.labels[keep])  # 1 -> 0, 4 -> 1 (rarest), 7 -> 2
    dataset = Dataset(name="digits-3", images=digits.images[keep], labels=labels.astype(np.int64),
                      class_names=("one", "four", "seven"), official_split=None, sources=None)
    cfg3 = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"critical_classes": {"four": 0.9}}),
                                  "strategies": {"ldam": {"drw_epoch": 1}, "smote": {}}})  # 2 members, 2 ensembles
    prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg3), cfg3)
    ensembles = pipeline.fit_ensembles(prepared, pipeline.gather_predictions(prepared, _train_all(prepared, cfg3, FoldCache(tmp_path / "c"))), cfg3)
    assert {d["kind"] for d in ensembles.decisions.values()} == {"offsets"}
    for name, proba in ensembles.predictions.oof.items():
        recall_four = np.mean(apply_decision(proba, ensembles.decisions[name])[prepared.y_train == 1] == 1)
        assert recall_four >= 0.9, name
    metrics = pipeline.evaluate_on_test(prepared, ensembles, cfg3)
    chosen = metrics["recommended"]["model"]
    assert chosen in metrics["models"]
    for name in set(metrics["models"]) - {chosen}:  # paired on the macro ROC AUC
        gap = metrics["models"][name]["test"]["roc_auc"] - metrics["models"][chosen]["test"]["roc_auc"]
        assert metrics["models"][name]["test_vs_recommended"]["roc_auc_difference"] == pytest.approx(gap)
    stacking = metrics["models"]["stacking"]
    y_test = prepared.test_labels.reveal()
    expected = np.zeros((3, 3), dtype=int)
    np.add.at(expected, (y_test, apply_decision(ensembles.predictions.test["stacking"], stacking["decision"])), 1)
    assert stacking["test"]["confusion_matrix"] == expected.tolist()
