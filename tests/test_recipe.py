"""The training recipe: step budgets resolved per fold, a floor of steps always trained, patience in steps,
test-time augmentation that averages exactly the views it names, and the resolved values recorded."""

import math

import keras
import numpy as np
import pytest

from medstack.config import AugmentationConfig, ModelConfig, NoParams, TrainingConfig
from medstack.models.network import TTAView, TTAViews, build_model, tta_view_count, tta_views, with_tta
from medstack.models.recipe import resolve_recipe
from medstack.models.training import CNNClassifier

SMALL = ModelConfig(filters=[4], convs_per_block=1, dense_units=8, batch_norm=False, head="gap")


@pytest.mark.parametrize("n_train, min_epoch_steps, epochs, steps_per_epoch", [
    (437, 50, 10, 50),    # a small dataset: passes of 7 steps, epochs of 50 steps, 10 of them reach 500 steps
    (437, 0, 72, 7),      # without the epoch floor: one pass an epoch, 72 epochs
    (3766, 50, 20, 59),   # a large one: 20 passes of 59 steps are already 1,180 steps; nothing changes
    (1, 50, 10, 50),      # one row: 50 single-row steps an epoch
])
def test_epochs_follow_the_step_budget(n_train, min_epoch_steps, epochs, steps_per_epoch):
    cfg = TrainingConfig(epochs=20, batch_size=64, min_steps=500, min_epoch_steps=min_epoch_steps)
    recipe = resolve_recipe(n_train, cfg)
    assert (recipe.steps_per_epoch, recipe.epochs) == (steps_per_epoch, epochs)
    assert recipe.planned_steps == epochs * steps_per_epoch >= 500


def test_patience_and_earliest_stop_are_steps():
    cfg = TrainingConfig(epochs=20, batch_size=64, min_steps=500, stop_after_steps=250, patience_steps=200)
    small, large = resolve_recipe(437, cfg), resolve_recipe(3766, cfg)
    assert (small.patience_epochs, small.stop_from_epoch) == (4, 5)  # epochs of 50 steps
    one_pass = resolve_recipe(437, cfg.model_copy(update={"min_epoch_steps": 0}))
    assert (one_pass.patience_epochs, one_pass.stop_from_epoch) == (math.ceil(200 / 7), math.ceil(250 / 7))
    assert (large.patience_epochs, large.stop_from_epoch) == (4, 5)
    assert resolve_recipe(10, cfg.model_copy(update={"patience_steps": 1})).patience_epochs == 1


def test_loss_phases_stretch_with_the_budget():
    recipe = resolve_recipe(437, TrainingConfig(epochs=20, batch_size=64, min_steps=500))
    assert recipe.stretch(10, 20) == 5  # LDAM's DRW at half the configured epochs stays at half the budget (of 10)
    assert resolve_recipe(3766, TrainingConfig(epochs=20, min_steps=500)).stretch(10, 20) == 10


def test_an_epoch_spans_several_passes_each_a_full_permutation():
    from medstack.models.feed import ShuffledBatches

    x = np.arange(10).reshape(10, 1, 1, 1)
    batches = ShuffledBatches(x, np.zeros((10, 2)), batch_size=4, seed=3, steps_per_epoch=7)
    seen = []
    for _ in range(3):  # three epochs of 7 steps = 21 batches = 7 passes of 3 batches (4 + 4 + 2 rows)
        seen += [batches[i][0].ravel().tolist() for i in range(len(batches))]
        batches.on_epoch_end()
    assert len(batches) == 7 and [len(b) for b in seen] == [4, 4, 2] * 7
    for p in range(7):
        assert sorted(sum(seen[3 * p : 3 * p + 3], [])) == list(range(10))  # every row once per pass
    again = ShuffledBatches(x, np.zeros((10, 2)), batch_size=4, seed=3, steps_per_epoch=7)
    assert [again[i][0].ravel().tolist() for i in range(7)] == seen[:7]  # same seed, same batches


def test_training_input_is_seeded_whatever_the_global_random_state_and_thread():
    """What ``CNNClassifier.fit`` feeds: the batch order depends on the seed alone, not on numpy's, Python's or the
    backend's global RNG, nor on other trainings building their input at the same time in other threads."""
    from concurrent.futures import ThreadPoolExecutor

    from medstack.models.feed import training_input

    x = np.arange(20).reshape(20, 1, 1, 1)

    def batch_rows(seed: int) -> list[list[int]]:
        feed = training_input(x, np.zeros((20, 2)), batch_size=6, seed=seed, steps_per_epoch=8)
        data, fit = feed.next_epochs(2)  # two epochs of 8 steps: four passes of 6 + 6 + 6 + 2 rows
        assert fit == {"steps_per_epoch": 8, "shuffle": False}  # one iterator across the epochs, in seeded order
        return [np.asarray(xb).ravel().tolist() for xb, _ in data]

    keras.utils.set_random_seed(0)  # seeds Python's, numpy's and the backend's global generators
    first = batch_rows(5)
    keras.utils.set_random_seed(1)
    np.random.rand(7)
    assert batch_rows(5) == first
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(batch_rows, [5, 6, 5, 6])) == [first, batch_rows(6), first, batch_rows(6)]
    assert batch_rows(6) != first
    assert [len(b) for b in first] == [6, 6, 6, 2] * 4
    assert all(sorted(sum(first[4 * p : 4 * p + 4], [])) == list(range(20)) for p in range(4))


def test_warmup_is_a_share_of_the_planned_steps():
    cosine = resolve_recipe(437, TrainingConfig(epochs=20, min_steps=500))
    assert cosine.warmup_steps == round(0.05 * cosine.planned_steps) and cosine.lr_schedule == "cosine"
    plateau = resolve_recipe(437, TrainingConfig(epochs=20, min_steps=500, lr_schedule={"kind": "plateau"}))
    assert plateau.warmup_steps == 0


@pytest.mark.slow
def test_a_minimum_number_of_steps_is_always_trained(rng):
    """Val labels are noise, so val ROC AUC never improves: without the floor early stopping would end training
    after patience + 1 epochs; with it every planned step up to the earliest stop is trained."""
    x = rng.integers(0, 255, (32, 8, 8, 1)).astype("uint8")
    y = np.array([0] * 24 + [1] * 8)
    training = TrainingConfig(epochs=1, jit_compile=False, batch_size=16, min_steps=12, min_epoch_steps=0, stop_after_steps=12, patience_steps=1,
                              tta="none", calibration="none")
    clf = CNNClassifier("class_weight", NoParams(), 2, SMALL, None, training, seed=0)
    clf.fit(x, y, x[:16], rng.integers(0, 2, 16))
    recipe = clf.recipe_
    assert (recipe.steps_per_epoch, recipe.epochs, recipe.stop_from_epoch, recipe.patience_epochs) == (2, 6, 5, 1)
    assert clf.info_["steps_run"] >= 12 and clf.info_["epochs_run"] == 6
    assert clf.info_["best_epoch"] >= recipe.stop_from_epoch  # restore-best never went back before the floor


def _reference_views(x: np.ndarray, views: list[dict]) -> list[np.ndarray]:
    """The views written out with numpy: flips, then a zero-filled shift."""
    out = []
    for view in views:
        v = x
        if view["flip"] in ("horizontal", "both"):
            v = v[:, :, ::-1]
        if view["flip"] in ("vertical", "both"):
            v = v[:, ::-1]
        shifted = np.zeros_like(v)
        dy, dx = view["dy"], view["dx"]
        h, w = v.shape[1:3]
        shifted[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = v[:, max(-dy, 0):h - max(dy, 0),
                                                                              max(-dx, 0):w - max(dx, 0)]
        out.append(shifted)
    return out


def test_tta_views_are_what_the_augmentation_allows():
    xray = AugmentationConfig(flip="none", shift=0.08, rotation=0.0, zoom=0.0)
    assert tta_views(xray, (28, 28, 1), "auto") == [
        {"flip": "none", "dy": 0, "dx": 0},
        {"flip": "none", "dy": 1, "dx": 0}, {"flip": "none", "dy": -1, "dx": 0},
        {"flip": "none", "dy": 0, "dx": 1}, {"flip": "none", "dy": 0, "dx": -1},
    ]
    histology = AugmentationConfig(flip="horizontal_and_vertical", shift=0.0)
    assert [v["flip"] for v in tta_views(histology, (64, 64, 3), "auto")] == ["none", "horizontal", "vertical", "both"]
    assert tta_views(histology, (64, 64, 3), "none") == [{"flip": "none", "dy": 0, "dx": 0}]


def test_tta_averages_exactly_the_views_it_names(rng, tmp_path):
    net = build_model((6, 5, 1), 3, SMALL, None, seed=3)
    views = [{"flip": "none", "dy": 0, "dx": 0}, {"flip": "horizontal", "dy": 0, "dx": 0},
             {"flip": "both", "dy": 0, "dx": 0}, {"flip": "none", "dy": 2, "dx": 0}, {"flip": "none", "dy": 0, "dx": -1}]
    x = rng.integers(0, 255, (4, 6, 5, 1)).astype("float32")
    expected = np.mean([np.asarray(net(v, training=False)) for v in _reference_views(x, views)], axis=0)
    tta = with_tta(net, views)
    np.testing.assert_allclose(np.asarray(tta(x, training=False)), expected, rtol=1e-5, atol=1e-6)
    # a different set of views gives a different answer: the average is over these views, not any views
    fewer = np.asarray(with_tta(net, views[:2])(x, training=False))
    assert not np.allclose(fewer, expected)
    tta.save(tmp_path / "tta.keras")
    loaded = keras.saving.load_model(tmp_path / "tta.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected, rtol=1e-5, atol=1e-6)
    # the network runs once, on the views stacked into one batch
    assert [type(layer).__name__ for layer in tta.layers] == ["InputLayer", "TTAViews", "Functional", "ViewMean"]
    assert tta_view_count(loaded) == len(views)
    with pytest.raises(ValueError, match="flip must be none, horizontal, vertical or both"):
        TTAViews([{"flip": "diagonal", "dy": 0, "dx": 0}])


def test_a_fold_model_saved_with_one_layer_a_view_still_loads_and_predicts_the_same(rng, tmp_path):
    """Bundles written before the views were stacked into one batch hold one TTAView layer a view: they load in
    safe mode and predict what the stacked layout predicts."""
    net = build_model((6, 5, 1), 3, SMALL, None, seed=4)
    views = [{"flip": "none", "dy": 0, "dx": 0}, {"flip": "vertical", "dy": 0, "dx": 0},
             {"flip": "none", "dy": -1, "dx": 2}]
    inputs = keras.Input(shape=(6, 5, 1), name="pixels")
    logits = [net(TTAView(**view, name=f"tta_view{i}")(inputs)) for i, view in enumerate(views)]
    keras.Model(inputs, keras.layers.Average(name="tta_mean")(logits)).save(tmp_path / "per-view.keras")
    old = keras.saving.load_model(tmp_path / "per-view.keras", safe_mode=True)
    x = rng.integers(0, 255, (7, 6, 5, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(old(x, training=False)), np.asarray(with_tta(net, views)(x, training=False)),
                               rtol=1e-5, atol=1e-6)
    assert tta_view_count(old) == 3 and tta_view_count(net) == 1


def test_without_tta_the_model_is_the_network_itself():
    net = build_model((6, 6, 1), 2, SMALL, None)
    assert with_tta(net, [{"flip": "none", "dy": 0, "dx": 0}]) is net


@pytest.mark.slow
@pytest.mark.parametrize("tta, views", [("none", 0), ("auto", 5)])
def test_tta_setting_reaches_the_predicting_model(rng, tta, views):
    """What the classifier predicts (OOF, val for calibration, test) goes through the TTA views, or through none."""
    x = rng.integers(0, 255, (32, 8, 8, 1)).astype("uint8")
    y = np.array([0] * 24 + [1] * 8)
    aug = AugmentationConfig(flip="none", shift=0.25, rotation=0.0, zoom=0.0)
    training = TrainingConfig(epochs=1, jit_compile=False, batch_size=16, min_steps=0, min_epoch_steps=0, tta=tta, calibration="none")
    clf = CNNClassifier("class_weight", NoParams(), 2, SMALL, aug, training, seed=0).fit(x, y, x[:16], y[:16])
    assert tta_view_count(clf.model_) == max(views, 1)
    assert clf.info_["tta_views"] == max(views, 1)
    plain = keras.ops.convert_to_numpy(keras.ops.softmax(clf.network_(x, training=False)))
    assert np.allclose(clf.predict_proba(x), plain, atol=1e-6) == (tta == "none")


def test_fit_trains_on_exactly_the_seeded_batches_across_epochs_and_phases():
    """Keras must neither restart the batch order at each epoch nor at the next loss phase's ``fit``: a model that
    records its training inputs sees the PyDataset's seeded batches, epoch after epoch, across two ``fit`` calls."""
    from medstack.models.feed import ShuffledBatches, training_input

    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.eye(2, dtype=np.float32)[np.arange(10) % 2]
    seen: list[list[int]] = []

    class Record(keras.layers.Layer):
        def call(self, inputs, training=None):
            if training:
                seen.append(np.asarray(inputs).ravel().astype(int).tolist())
            return inputs

    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Record()(inputs)))
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True), run_eagerly=True)
    feed = training_input(x, y, batch_size=4, seed=3, steps_per_epoch=5)
    for start, end in ((0, 2), (2, 3)):  # two loss phases: epochs 0-1, then epoch 2
        data, fit = feed.next_epochs(end - start)
        model.fit(data, epochs=end, initial_epoch=start, verbose=0, **fit)
    expected = ShuffledBatches(x, y, batch_size=4, seed=3, steps_per_epoch=5)
    wanted = []
    for _ in range(3):
        wanted += [np.sort(b).tolist() for b in expected._batches]
        expected.on_epoch_end()
    assert seen == wanted and len(seen) == 15
