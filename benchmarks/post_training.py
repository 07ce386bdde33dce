"""Seconds of every stage after training, on OOF probability matrices of 4 cheap base models (no CNN is trained).

The post-training stages read probabilities only, so they are timed on probabilities made cheaply and honestly:

* ``7class``: a 7-class, 10,000-image set with HAM10000's class shares (6,695 / 1,111 / 1,097 / 513 / 327 / 142 /
  115) built from scikit-learn's bundled 8x8 digits 0-6 (offline): every source image gives as many variants as its
  class needs (a one-pixel shift and Gaussian pixel noise, sigma 4 of 16, each), and the variants of one source
  image share a group id, so splits and folds keep them together (no variant of a training image is ever scored
  as unseen). Split 80/10/10 with a 10% calibration slice of train, as a default run: 7,200 OOF rows.
* ``binary``: PneumoniaMNIST at full size (``/work/shared/data/pneumoniamnist.npz`` or ``--npz``; official split,
  4,708 train of which 471 are the calibration slice: 4,237 OOF rows), pixels downsampled to 14x14.

The four strategies' fold models are scikit-learn models on the flattened pixels, one per strategy name, each with
its own kind of probabilities (like the CNNs: one balanced, one over-confident, some with exact zeros that the
log-odds features clip at 1e-6): ``class_weight`` a class-balanced logistic regression, ``custom_loss`` Gaussian
naive Bayes, ``ldam`` 25 nearest neighbours, ``smote`` a 100-tree random forest. Each fold model is fitted on its
fold's training rows (``PreparedData.fold_data``, the pipeline's folds) and predicts its held-out fold, val, test and
the calibration slice: the same ``FoldResult`` a trained CNN leaves. From there the pipeline's own functions run
and are timed: the stacking meta-model's fit and its nested ``cross_val_proba``, the whole ``fit_ensembles``
(decisions, conformal calibration and referral included), ``evaluate_on_test`` (bootstrap intervals), the
temperature fit of the 20 fold models on val, and the run folder (``compose_run`` + ``write_run``: tables, plots,
report, model.json). The meta-model's two stages are timed alone too, under one BLAS thread as ``fit_ensembles``
runs them. The meta-model's chosen C, its inner-CV log loss and the log loss of its nested OOF predictions are
printed too, so a faster meta-model can be checked for the same or a better choice.

    flock /tmp/medstack-cpu.lock python benchmarks/post_training.py               # both cases
    flock /tmp/medstack-cpu.lock python benchmarks/post_training.py --cases 7class

Prints a markdown table per case (seconds per stage) and the meta-model's choice.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

from medstack import pipeline
from medstack.config import RunConfig
from medstack.data.dataset import Dataset
from medstack.pipeline import FoldResult
from medstack.pipeline.combine import ONE_BLAS_THREAD

REPO = Path(__file__).resolve().parents[1]
HAM_SHARES = (6705, 1113, 1099, 514, 327, 142, 115)  # HAM10000's 7 classes (10,015 images)
STRATEGIES = ("ldam", "class_weight", "smote", "custom_loss")


def digits_7class(n: int = 10_000, seed: int = 0) -> Dataset:
    """7 digit classes with HAM10000's shares; variants of one source image share a group."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    counts = np.floor(np.asarray(HAM_SHARES) * n / sum(HAM_SHARES)).astype(int)
    counts[0] += n - counts.sum()
    images, labels, groups = [], [], []
    for cls, count in enumerate(counts):
        sources = np.flatnonzero(digits.target == cls)[:count]
        for i in range(count):
            src = sources[i % len(sources)]
            shifted = np.roll(digits.images[src], tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
            noisy = np.clip(shifted + rng.normal(0.0, 4.0, shifted.shape), 0, 16)
            images.append(np.rint(noisy * (255 / 16)).astype(np.uint8))
            labels.append(cls)
            groups.append(f"d{src}")
    names = ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")
    return Dataset("digits-7class", np.stack(images)[..., None], np.asarray(labels, np.int64), names, None, None,
                   groups=tuple(groups))


def pneumonia(path: Path) -> Dataset:
    data = np.load(path)
    images = np.concatenate([data[f"{s}_images"] for s in ("train", "val", "test")])
    labels = np.concatenate([data[f"{s}_labels"].ravel() for s in ("train", "val", "test")]).astype(np.int64)
    splits = ("train", "val", "test")
    official = np.concatenate([np.full(len(data[f"{s}_labels"]), i, np.int8) for i, s in enumerate(splits)])
    return Dataset("pneumoniamnist", images[..., None], labels, ("normal", "pneumonia"), official, None)


def base_model(strategy: str, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier

    return {"class_weight": LogisticRegression(C=0.01, class_weight="balanced", max_iter=500),
            "custom_loss": GaussianNB(),
            "ldam": KNeighborsClassifier(25),
            "smote": RandomForestClassifier(100, min_samples_leaf=2, random_state=seed, n_jobs=1)}[strategy]


def flat(images: np.ndarray, pool: int) -> np.ndarray:
    x = images.astype(np.float32)[..., 0] / 255.0
    if pool > 1:
        n, h, w = x.shape
        x = x.reshape(n, h // pool, pool, w // pool, pool).mean(axis=(2, 4))
    return x.reshape(len(x), -1)


def fold_results(prepared: pipeline.PreparedData, pool: int, model_dir: Path) -> list[FoldResult]:
    """The FoldResults of 4 scikit-learn strategies x K folds, each fold model saved like a trained CNN."""
    results = []
    for strategy in STRATEGIES:
        for fold in range(prepared.n_folds):
            data = prepared.fold_data(fold)
            model = base_model(strategy, fold).fit(flat(data.x_train, pool), data.y_train)
            path = model_dir / f"{strategy}-{fold}.joblib"
            joblib.dump(model, path)
            proba = {split: model.predict_proba(flat(x, pool)) for split, x in
                     (("oof", data.x_holdout), ("val", data.x_val), ("test", data.x_test), ("cal", data.x_cal))}
            history = {"loss": list(np.linspace(1.0, 0.3, 10)), "val_loss": list(np.linspace(1.0, 0.5, 10))}
            results.append(FoldResult(strategy, fold, f"{strategy}-{fold}", data.holdout_rows, proba["oof"],
                                      proba["val"], proba["test"], proba["cal"], history,
                                      {"epochs": 10, "best_epoch": 9}, str(path)))
    return results


def timed(label: str, times: dict[str, float], fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    times[label] = time.perf_counter() - start
    return out


def run_case(name: str, dataset: Dataset, cfg: RunConfig, pool: int) -> None:
    from sklearn.metrics import log_loss

    from medstack import outputs
    from medstack.models.calibration import fit_temperature
    from medstack.models.ensemble import StackingMetaModel
    from medstack.run_contents import compose_run

    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        prepared = pipeline.prepare_folds(dataset, pipeline.split_rows(dataset, cfg), cfg)
        results = fold_results(prepared, pool, Path(tmp))
        preds = pipeline.gather_predictions(prepared, results)
        setup = time.perf_counter() - start
        y = prepared.y_train
        base_oof = {s: preds.oof[s] for s in cfg.strategies}
        meta = StackingMetaModel(cfg.ensemble.meta_Cs, cfg.ensemble.inner_folds, cfg.seed,
                                 features=cfg.ensemble.meta_features)
        with threadpool_limits(**ONE_BLAS_THREAD):  # as fit_ensembles runs them
            timed("meta-model fit (C chosen by inner CV)", times, meta.fit, base_oof, y)
            nested = timed("meta-model nested OOF (cross_val_proba)", times, meta.cross_val_proba, base_oof, y)
        timed("temperature of 20 fold models on val", times, lambda: [
            fit_temperature(np.log(np.clip(r.val_proba, 1e-12, None)), prepared.y_val) for r in results])
        ensembles = timed("fit_ensembles (all of the above but temperature, + decisions, conformal)", times,
                          pipeline.fit_ensembles, prepared, preds, cfg)
        metrics = timed("evaluate_on_test (bootstrap CIs, paired AUCs, sets)", times,
                        pipeline.evaluate_on_test, prepared, ensembles, cfg)
        contents = timed("compose_run (tables, report text, model.json)", times, compose_run, "bench-run", cfg,
                         prepared, ensembles, metrics, {})
        timed("write_run (files, plots)", times, outputs.write_run, Path(tmp) / "runs", "bench-run", contents)
    members = {s: log_loss(y, preds.oof[s], labels=range(prepared.num_classes)) for s in cfg.strategies}
    print(f"\n### {name}: {len(y):,} OOF rows, {prepared.num_classes} classes, {len(prepared.cal_idx):,} calibration, "
          f"{int(prepared.test_labels.reveal().shape[0]):,} test; setup (base models) {setup:.1f} s\n")
    print("| stage | seconds |\n|---|---|")
    for label, seconds in times.items():
        print(f"| {label} | {seconds:.2f} |")
    after = sum(v for k, v in times.items() if not k.startswith(("meta-model", "temperature")))
    print(f"| **after training, total** (fit_ensembles, evaluate, run folder) | **{after:.1f}** |")
    scores = ", ".join(f"{c}: {-s:.4f}" for c, s in meta.cv_results_.items())
    print(f"\nmeta-model: C = {meta.best_C_:g}; inner-CV log loss per C {scores}")
    print(f"nested OOF log loss of stacking: {log_loss(y, nested, labels=range(prepared.num_classes)):.4f} "
          "(members: " + ", ".join(f"{s} {v:.4f}" for s, v in members.items()) + ")")
    print("OOF ROC AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in ensembles.recommended["oof_roc_auc"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=("7class", "binary"), default=["7class", "binary"])
    parser.add_argument("--npz", type=Path, default=Path("/work/shared/data/pneumoniamnist.npz"))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    print(f"commit {commit.strip()}")
    cfg = RunConfig(name="post-training-bench")  # the defaults: 5 folds, log-odds stacking, 1,000 bootstraps
    if "7class" in args.cases:
        run_case("7class", digits_7class(), cfg, pool=1)
    if "binary" in args.cases:
        binary = cfg.model_copy(update={"split": cfg.split.model_copy(update={"use_official": True}),
                                        "ensemble": cfg.ensemble.model_copy(update={"threshold_policy": "youden"})})
        run_case("binary", pneumonia(args.npz), binary, pool=2)


if __name__ == "__main__":
    main()
