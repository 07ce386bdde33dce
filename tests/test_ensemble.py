import numpy as np
import pytest

from medstack.models.ensemble import StackingMetaModel, soft_vote, stack_features


def _binary_probas(rng, y, quality):
    score = np.clip(y * quality + rng.normal(0.5 - quality / 2, 0.25, len(y)), 0.01, 0.99)
    return np.column_stack([1 - score, score])


def test_soft_vote_is_the_mean():
    a = np.array([[0.2, 0.8], [0.6, 0.4]])
    b = np.array([[0.4, 0.6], [0.8, 0.2]])
    assert soft_vote({"a": a, "b": b}) == pytest.approx(np.array([[0.3, 0.7], [0.7, 0.3]]))


def test_stack_features_drops_collinear_column_only_for_binary():
    binary = {"a": np.array([[0.2, 0.8]]), "b": np.array([[0.9, 0.1]])}
    assert stack_features(binary, ["b", "a"]).tolist() == [[0.1, 0.8]]
    three = {"a": np.array([[0.2, 0.3, 0.5]])}
    assert stack_features(three, ["a"]).shape == (1, 3)
    with pytest.raises(ValueError, match=r"missing base-model predictions for \['c'\]"):
        stack_features(binary, ["a", "c"])


def test_log_odds_features_are_the_clipped_log_odds():
    binary = {"a": np.array([[0.2, 0.8], [1.0, 0.0]]), "b": np.array([[0.9, 0.1], [0.5, 0.5]])}
    got = stack_features(binary, ["a", "b"], "log_odds")
    eps = 1e-6  # a saturated probability gives a finite feature, log((1 - eps) / eps)
    np.testing.assert_allclose(got, [[np.log(4.0), np.log(1 / 9)], [np.log(eps / (1 - eps)), 0.0]], rtol=1e-12)
    three = {"a": np.array([[0.2, 0.3, 0.5]]), "b": np.array([[0.0, 0.0, 1.0]])}
    np.testing.assert_allclose(stack_features(three, ["b", "a"], "log_odds"),
                               [[np.log(eps), np.log(eps), np.log(1 - eps), np.log(0.2), np.log(0.3), np.log(0.5)]])
    with pytest.raises(ValueError, match="one of"):
        stack_features(binary, ["a"], "logits")
    with pytest.raises(ValueError, match="one of"):
        StackingMetaModel([1.0], features="logits")


def test_meta_model_reads_the_features_it_was_built_for(rng):
    y = rng.integers(0, 2, 300)
    oof = {"a": _binary_probas(rng, y, 0.8), "b": _binary_probas(rng, y, 0.3)}
    on_odds = StackingMetaModel([1.0], inner_folds=3).fit(oof, y)
    on_probas = StackingMetaModel([1.0], inner_folds=3, features="probabilities").fit(oof, y)
    assert on_odds.features == "log_odds"  # the default
    np.testing.assert_array_equal(on_odds.features_of(oof), stack_features(oof, ["a", "b"], "log_odds"))
    np.testing.assert_array_equal(on_probas.features_of(oof), stack_features(oof, ["a", "b"]))
    assert not np.allclose(on_odds.predict_proba(oof), on_probas.predict_proba(oof))
    del on_probas.__dict__["features"]  # a meta-model pickled before the option existed stacked probabilities
    np.testing.assert_array_equal(on_probas.features_of(oof), stack_features(oof, ["a", "b"]))


def test_meta_model_prefers_the_informative_base_model(rng, tmp_path):
    y = rng.integers(0, 2, 400)
    oof = {"good": _binary_probas(rng, y, 0.8), "noise": _binary_probas(rng, np.zeros_like(y), 0.0)}
    meta = StackingMetaModel([0.01, 0.1, 1.0, 10.0], inner_folds=3, seed=0).fit(oof, y)
    coef = meta.coefficients
    assert abs(coef["good"][0]) > 3 * abs(coef["noise"][0])
    assert meta.best_C_ in (0.01, 0.1, 1.0, 10.0)
    cv = meta.cross_val_proba(oof, y)
    assert cv.shape == (400, 2) and np.allclose(cv.sum(axis=1), 1)
    meta.save(tmp_path / "m.joblib")
    again = StackingMetaModel.load(tmp_path / "m.joblib")
    assert np.allclose(again.predict_proba(oof), meta.predict_proba(oof))


def test_meta_model_cross_val_proba_is_not_in_sample(rng):
    # With pure-noise features an in-sample fit would still separate a little; honest OOF stays near chance.
    y = rng.integers(0, 2, 300)
    oof = {f"m{i}": _binary_probas(rng, np.zeros_like(y), 0.0) for i in range(4)}
    meta = StackingMetaModel([100.0], inner_folds=3).fit(oof, y)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, meta.cross_val_proba(oof, y)[:, 1]) < roc_auc_score(y, meta.predict_proba(oof)[:, 1])


def test_load_refuses_other_pickles(tmp_path):
    import joblib

    joblib.dump({"not": "a model"}, tmp_path / "x.joblib")
    with pytest.raises(TypeError, match="does not hold a StackingMetaModel"):
        StackingMetaModel.load(tmp_path / "x.joblib")


def test_stacking_is_applied_per_fold_and_averaged(rng):
    """On test, the meta-model sees each fold's models (the kind of input it learned from), not the K-model mean."""
    y = rng.integers(0, 2, 300)
    oof = {"a": _binary_probas(rng, y, 2.0), "b": _binary_probas(rng, y, 0.5)}
    meta = StackingMetaModel([1.0], inner_folds=3).fit(oof, y)
    folds = {name: [_binary_probas(rng, y[:50], 2.0) for _ in range(3)] for name in ("a", "b")}
    expected = np.mean([meta.predict_proba({n: folds[n][k] for n in folds}) for k in range(3)], axis=0)
    np.testing.assert_allclose(meta.predict_proba_per_fold(folds), expected)
    mean_first = meta.predict_proba({n: np.mean(folds[n], axis=0) for n in folds})
    assert not np.allclose(mean_first, expected)  # the two orders differ: the logistic link is not linear
    with pytest.raises(ValueError, match="same number"):
        meta.predict_proba_per_fold({"a": folds["a"], "b": folds["b"][:2]})


def test_recommendation_is_chosen_on_oof_and_names_the_member_when_ensembles_do_not_help(rng):
    from medstack.pipeline.combine import recommend_model

    y = rng.integers(0, 2, 400)
    strong, weak = _binary_probas(rng, y, 0.6), _binary_probas(rng, y, 0.1)
    members = {"ldam": strong, "smote": weak}
    diluted = {**members, "soft_voting": (strong + weak) / 2, "stacking": weak}
    picked = recommend_model(y, diluted, ["ldam", "smote"], 1)
    assert picked["model"] == "ldam" and "neither ensemble beats the best single strategy" in picked["reason"]
    better = {**members, "soft_voting": (strong + weak) / 2, "stacking": _binary_probas(rng, y, 1.0)}
    assert recommend_model(y, better, ["ldam", "smote"], 1)["model"] == "stacking"


def _multiclass_members(rng, y, k, sharpness=2.0):
    """Three members of a K-class task: a good over-confident one (its logits times ``sharpness``, like LDAM), a
    weaker calibrated one and a near-useless one."""
    members = {}
    for name, strength, sharp in (("sharp", 2.0, sharpness), ("soft", 1.0, 1.0), ("weak", 0.2, 1.0)):
        logits = rng.normal(0.0, 1.0, (len(y), k)) + strength * np.eye(k)[y]
        p = np.exp(sharp * logits)
        members[name] = p / p.sum(axis=1, keepdims=True)
    return members


def test_meta_model_search_is_the_grid_search_it_replaced(rng):
    """The warm-started Newton path scores every C as the grid search of cold L-BFGS fits it replaced (same folds,
    same unscaled features), picks the same C and refits the same model; cold Newton fits to a tight tolerance
    agree to 1e-4."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    y = rng.choice(4, 500, p=[0.55, 0.25, 0.12, 0.08])
    oof = _multiclass_members(rng, y, 4)
    Cs = [0.001, 0.01, 0.1, 1.0, 10.0]
    meta = StackingMetaModel(Cs, inner_folds=4, seed=5).fit(oof, y)
    x = meta.features_of(oof)
    assert list(meta.cv_results_) == [str(c) for c in Cs]
    for estimator, tolerance in ((LogisticRegression(max_iter=2000), 1e-3),
                                 (LogisticRegression(solver="newton-cholesky", tol=1e-10), 1e-4)):
        grid = GridSearchCV(estimator, {"C": Cs}, scoring="neg_log_loss",
                            cv=StratifiedKFold(4, shuffle=True, random_state=5)).fit(x, y)
        np.testing.assert_allclose(list(meta.cv_results_.values()), grid.cv_results_["mean_test_score"],
                                   atol=tolerance)
        assert meta.best_C_ == grid.best_params_["C"]
        np.testing.assert_allclose(meta.predict_proba(oof), grid.predict_proba(x), atol=10 * tolerance)
    assert isinstance(meta.estimator_, LogisticRegression)  # what model.json and the fused head read


def test_meta_model_pickled_by_the_grid_search_version_still_loads_and_predicts(rng, tmp_path):
    """A meta-model written before the Newton path (GridSearchCV, L-BFGS): the same attributes, read the same way."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    from medstack.inference.stacking import JsonStacking

    y = rng.integers(0, 3, 200)
    oof = _multiclass_members(rng, y, 3)
    raw = stack_features(oof, list(oof), "log_odds")
    old = StackingMetaModel.__new__(StackingMetaModel)
    old.__dict__.update(Cs=[0.1, 1.0], inner_folds=3, seed=0, features="log_odds", model_names_=list(oof),
                        best_C_=1.0, cv_results_={"0.1": -0.5, "1.0": -0.4},
                        estimator_=LogisticRegression(C=1.0, max_iter=2000).fit(raw, y))
    joblib.dump(old, tmp_path / "meta_model.joblib")
    again = StackingMetaModel.load(tmp_path / "meta_model.joblib")
    np.testing.assert_allclose(again.predict_proba(oof), old.estimator_.predict_proba(raw))
    folds = {name: [p[:50], p[50:100]] for name, p in oof.items()}
    np.testing.assert_allclose(again.predict_proba_per_fold(folds), JsonStacking.from_meta_model(again)
                               .predict_proba_per_fold(folds), atol=1e-12)
    assert set(again.coefficients) == set(oof) and again.best_C_ == 1.0
