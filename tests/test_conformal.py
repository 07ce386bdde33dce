"""Class-conditional split conformal sets (medstack.models.conformal): the coverage guarantee in simulation, the
minimum-count policy, empty sets, p-values against a brute force and against crepes, the JSON round trip."""

import json

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.tree import DecisionTreeClassifier

from medstack.models.conformal import (
    ConformalCalibration, alpha_of, clopper_pearson, coverage_by_class, fit_conformal, format_set, min_count,
    nonconformity, set_summary,
)

LEVELS = (0.9, 0.95)
SEEDS = 150
PRIORS = np.array([0.62, 0.30, 0.08])  # class 2 is rare: about 32 of 400 calibration rows, enough for 95% (19)
MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [1.3, 0.6, 0.0, 0.0], [0.5, 1.6, 0.5, 0.0]])  # overlapping classes


def _draw(rng, n):
    y = rng.choice(3, n, p=PRIORS)
    return MEANS[y] + rng.normal(size=(n, 4)), y


def _deployed_scorer(make, X, y, seed, folds=3):
    """K fold models trained by K-fold on (X, y); the deployed scorer is their average, as in a medstack run."""
    split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y)
    fitted = [make().fit(X[train], y[train]) for train, _ in split]
    return lambda Z: np.mean([m.predict_proba(Z) for m in fitted], axis=0)


def _coverage_over_seeds(make, in_sample):
    """Per level: (seeds, classes) test coverage, and the mean 1 / (n_y + 1) of the calibration counts. Each seed
    draws a training split, a stratified calibration slice of it (the scorer never sees it, unless ``in_sample``:
    then the scorer's own training rows calibrate) and a fresh test set."""
    coverage = {lv: [] for lv in LEVELS}
    slack = []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        X, y = _draw(rng, 1200)
        X_fit, X_cal, y_fit, y_cal = train_test_split(X, y, test_size=400, stratify=y, random_state=seed)
        scorer = _deployed_scorer(make, X_fit, y_fit, seed)
        if in_sample:
            X_cal, y_cal = X_fit, y_fit
        calibration = fit_conformal(y_cal, scorer(X_cal), kind="split", levels=LEVELS)
        X_test, y_test = _draw(rng, 1500)
        proba = scorer(X_test)
        for lv in LEVELS:
            sets = calibration.prediction_sets(proba, lv)
            coverage[lv].append([sets[y_test == k, k].mean() for k in range(3)])
        slack.append(1 / (calibration.counts + 1))
    return {lv: np.array(c) for lv, c in coverage.items()}, np.mean(slack, axis=0)


def _mean_and_se(per_seed):
    """Mean coverage per class over seeds and its standard error (the seeds are independent; the spread across
    them carries both the calibration draw's and the test draw's binomial noise)."""
    return per_seed.mean(axis=0), per_seed.std(axis=0, ddof=1) / np.sqrt(len(per_seed))


def test_split_calibration_reaches_nominal_class_conditional_coverage():
    coverage, slack = _coverage_over_seeds(LinearDiscriminantAnalysis, in_sample=False)
    for lv in LEVELS:
        mean, se = _mean_and_se(coverage[lv])
        # the guarantee: lv <= E[coverage] <= lv + 1 / (n_y + 1) for every class, the rare one included
        assert np.all(mean >= lv - 3 * se), (lv, mean, se)
        assert np.all(mean <= lv + slack + 3 * se), (lv, mean, se, slack)


def test_an_in_sample_calibrator_is_caught_falling_short():
    """Deep trees memorise their training rows: calibrating the fold average on those rows makes the sets too small."""
    coverage, _ = _coverage_over_seeds(lambda: DecisionTreeClassifier(random_state=0), in_sample=True)
    for lv in LEVELS:
        mean, se = _mean_and_se(coverage[lv])
        assert np.all(mean < lv - 3 * se), (lv, mean, se)


def _brute_p_values(y_cal, proba_cal, proba):
    """p_k(x) written out loop by loop from the definition, unrounded scores compared at 6 decimals."""
    out = np.empty(proba.shape)
    for i in range(len(proba)):
        for k in range(proba.shape[1]):
            own = [round(1 - p, 6) for p in proba_cal[y_cal == k, k]]
            s = round(1 - proba[i, k], 6)
            out[i, k] = (sum(c >= s for c in own) + 1) / (len(own) + 1)
    return out


def _toy(rng, n_cal=(120, 60, 25), n_test=80):
    y = np.concatenate([np.full(c, k) for k, c in enumerate(n_cal)])
    proba_cal = rng.dirichlet([1.0, 1.0, 1.0], len(y))
    proba_cal[np.arange(len(y)), y] += 0.6
    proba_cal /= proba_cal.sum(axis=1, keepdims=True)
    return y, proba_cal, rng.dirichlet([1.0, 1.0, 1.0], n_test)


def test_p_values_and_sets_match_a_brute_force(rng):
    y, proba_cal, proba = _toy(rng)
    calibration = fit_conformal(y, proba_cal, kind="split")
    p = _brute_p_values(y, proba_cal, proba)
    assert np.array_equal(calibration.p_values(proba), p)
    for lv in LEVELS:
        assert np.array_equal(calibration.prediction_sets(proba, lv), p > 1 - lv + 1e-12)


def test_ties_count_against_the_image():
    """An image whose score equals calibration scores counts them as at least as strange: p rises, never falls."""
    calibration = fit_conformal(np.array([0, 0, 0, 1, 1, 1]), np.array([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2],
                                                                        [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]]),
                                kind="split", levels=(0.5,))
    assert calibration.p_values(np.array([[0.8, 0.2]]))[0, 0] == 3 / 4  # scores 0.1, 0.2, 0.2 vs 0.2: two ties + 1


def test_boundary_p_value_equal_to_alpha_is_out_of_the_set():
    """n = 9 rows, level 90%: a = 0.1 = 1/10 exactly; the least typical image (p = 1/10) is left out (p > a)."""
    y = np.zeros(9, dtype=int)
    proba_cal = np.column_stack([np.linspace(0.5, 0.9, 9), 1 - np.linspace(0.5, 0.9, 9)])
    calibration = fit_conformal(np.append(y, [1] * 9), np.vstack([proba_cal, proba_cal[:, ::-1]]), kind="split",
                                levels=(0.9,))
    strange = np.array([[0.1, 0.9]])
    assert calibration.p_values(strange)[0, 0] == pytest.approx(0.1)
    assert not calibration.prediction_sets(strange, 0.9)[0, 0]


@pytest.mark.parametrize("level, expected", [(0.9, 9), (0.95, 19), (0.8, 4), (0.99, 99), (0.97, 33)])
def test_min_count_is_ceil_of_one_minus_a_over_a(level, expected):
    assert min_count(level) == expected


def test_a_class_with_too_few_rows_is_refused_at_that_level_and_always_in_the_set(rng):
    y, proba_cal, proba = _toy(rng, n_cal=(120, 60, 12))  # 12 rare rows: enough for 90% (9), not for 95% (19)
    calibration = fit_conformal(y, proba_cal, kind="split")
    assert calibration.unavailable(0.9) == [] and calibration.unavailable(0.95) == [2]
    assert calibration.prediction_sets(proba, 0.95)[:, 2].all()
    assert not calibration.prediction_sets(proba, 0.9)[:, 2].all()
    per_level = {entry["level"]: entry for entry in calibration.to_dict()["per_level"]}
    assert per_level[0.95]["unavailable"] == [2] and per_level[0.95]["score_thresholds"][2] is None
    assert per_level[0.95]["min_count"] == 19 and per_level[0.9]["unavailable"] == []
    assert "classes [2] have fewer than 19 calibration rows" in calibration.guarantee(0.95)
    rows = coverage_by_class(np.zeros(len(proba), int), calibration.prediction_sets(proba, 0.95),
                             calibration.unavailable(0.95))
    assert [r["available"] for r in rows] == [True, True, False]


def test_an_image_unlike_every_class_gets_an_empty_set():
    y = np.repeat([0, 1], 50)
    proba_cal = np.where(np.arange(100)[:, None] < 50, [0.99, 0.01], [0.01, 0.99])  # confident, always right
    calibration = fit_conformal(y, proba_cal + np.linspace(0, 0.005, 100)[:, None] * [-1, 1], kind="split")
    undecided = np.array([[0.5, 0.5]])  # each class's score 0.5 is beyond all of its calibration scores
    sets = calibration.prediction_sets(undecided, 0.95)
    assert not sets.any() and format_set(sets[0], ["normal", "pneumonia"]) == "{}"
    assert set_summary(sets) == {"mean_size": 0.0, "single": 0.0, "empty": 1.0}
    assert format_set(np.array([True, True]), ["normal", "pneumonia"]) == "{normal, pneumonia}"


def test_score_thresholds_agree_with_the_sets(rng):
    y, proba_cal, proba = _toy(rng)
    calibration = fit_conformal(y, proba_cal, kind="oof")
    for lv in LEVELS:
        thresholds = np.array(calibration.score_thresholds(lv))
        assert np.array_equal(calibration.prediction_sets(proba, lv), nonconformity(proba) <= thresholds)


def test_json_round_trip_gives_the_same_p_values_and_sets(rng):
    y, proba_cal, proba = _toy(rng, n_cal=(200, 40, 10))
    calibration = fit_conformal(y, proba_cal, kind="oof", levels=(0.8, 0.9, 0.95))
    data = json.loads(json.dumps(calibration.to_dict()))
    assert data["kind"] == "oof" and data["counts"] == [200, 40, 10] and data["levels"] == [0.8, 0.9, 0.95]
    back = ConformalCalibration.from_dict(data)
    assert np.array_equal(back.p_values(proba), calibration.p_values(proba))
    for lv in (0.8, 0.9, 0.95):
        assert np.array_equal(back.prediction_sets(proba, lv), calibration.prediction_sets(proba, lv))
    assert "empirical coverage only" in back.guarantee(0.9)


def test_a_hand_edited_calibration_is_refused(rng):
    y, proba_cal, _ = _toy(rng)
    data = fit_conformal(y, proba_cal, kind="split").to_dict()
    data["per_level"][1]["unavailable"] = []
    data["per_level"][1]["score_thresholds"][0] = 0.5
    with pytest.raises(ValueError, match="do not match its scores"):
        ConformalCalibration.from_dict(data)


@pytest.mark.parametrize("args, message", [
    ((np.array([0, 1]), np.array([[0.5, 0.5], [0.2, 0.8]])), None),
    ((np.array([0, 2]), np.array([[0.5, 0.5], [0.2, 0.8]])), "labels must lie in 0..1"),
    ((np.array([0.0, 1.0]), np.array([[0.5, 0.5], [0.2, 0.8]])), "integer labels"),
    ((np.array([0, 1]), np.array([[0.5, np.nan], [0.2, 0.8]])), "finite and within"),
    ((np.array([0, 1]), np.array([0.5, 0.2])), r"\(N, K\) class probabilities"),
])
def test_bad_calibration_input(args, message):
    if message is None:
        assert fit_conformal(*args, kind="split").counts.tolist() == [1, 1]
    else:
        with pytest.raises(ValueError, match=message):
            fit_conformal(*args, kind="split")


def test_unknown_kind_level_and_uncalibrated_level_are_refused(rng):
    y, proba_cal, proba = _toy(rng)
    with pytest.raises(ValueError, match="unknown conformal calibration kind 'cross'"):
        fit_conformal(y, proba_cal, kind="cross")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        fit_conformal(y, proba_cal, kind="split", levels=(95,))
    with pytest.raises(ValueError, match="level 0.8 was not calibrated"):
        fit_conformal(y, proba_cal, kind="split").prediction_sets(proba, 0.8)


@pytest.mark.parametrize("k, n", [(0, 10), (7, 10), (10, 10), (38, 40), (0, 0)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    if n == 0:
        assert clopper_pearson(k, n) == (0.0, 1.0)
        return
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_alpha_is_exact_for_decimal_levels():
    assert alpha_of(0.9) == 0.1 and alpha_of(0.95) == 0.05


def test_matches_crepes_mondrian_conformal_classifier(rng):
    """crepes (a separate implementation) on the same hinge scores with the class as Mondrian category."""
    crepes = pytest.importorskip("crepes")
    y, proba_cal, proba = _toy(rng, n_cal=(119, 59, 24))  # class 0: a (n + 1) is an integer at 90% and 95%
    proba = np.vstack([proba, proba_cal])  # the calibration rows themselves reach every rank, p == a included
    calibration = fit_conformal(y, proba_cal, kind="split")
    oracle = crepes.ConformalClassifier().fit(nonconformity(proba_cal)[np.arange(len(y)), y], bins=y)
    scores = nonconformity(proba)
    per_class = [np.full(len(proba), k) for k in range(3)]
    p = np.column_stack([oracle.predict_p(scores[:, [k]], bins=b, smoothing=False)[:, 0]
                         for k, b in enumerate(per_class)])
    assert np.allclose(calibration.p_values(proba), p, rtol=0, atol=1e-12)
    assert np.isclose(p[:, 0], 0.1).any() and np.isclose(p[:, 0], 0.05).any()
    for lv in LEVELS:
        theirs = np.column_stack([oracle.predict_set(scores[:, [k]], bins=b, confidence=lv, smoothing=False)[:, 0]
                                  for k, b in enumerate(per_class)]).astype(bool)
        # crepes keeps a class when p >= a, this module when p > a (Vovk's convention): they differ only at p == a
        assert np.array_equal(calibration.prediction_sets(proba, lv), theirs & ~np.isclose(p, 1 - lv))
