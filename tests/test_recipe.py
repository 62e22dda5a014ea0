"""The fast recipe's levers, each off by default: their mechanics on tiny models (no timing)."""

from __future__ import annotations

import json
import pathlib
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, TINY

from keras_resnet import build_model, config, models, runtime, training
from keras_resnet.config import TrainConfig
from keras_resnet.data import digits as digits_source
from keras_resnet.data import splits, views
from keras_resnet.models import compiled
from keras_resnet.training import callbacks, checkpoints, optimization, precision, progress


def test_linear_and_cosine_schedules_with_warmup():
    linear = compiled.LearningRate("linear", 0.2, 100, warmup_steps=10)
    got = [float(linear(s)) for s in (0, 4, 9, 10, 55, 100, 150)]
    # Ramp (s + 1) / 10 of the peak over the first 10 steps, then a straight line to 0 at step 100.
    np.testing.assert_allclose(got, [0.02, 0.1, 0.2, 0.2, 0.1, 0.0, 0.0], atol=1e-6)
    cosine = compiled.LearningRate("cosine", 0.2, 110, warmup_steps=10)
    np.testing.assert_allclose([float(cosine(s)) for s in (10, 60, 110)], [0.2, 0.1, 0.0], atol=1e-6)
    step = compiled.LearningRate("step", 0.1, 100, (50,), 0.1, warmup_steps=4)
    np.testing.assert_allclose([float(step(s)) for s in (0, 3, 49, 50)], [0.025, 0.1, 0.1, 0.01], atol=1e-7)
    # The paper's schedule is untouched by default.
    assert optimization.schedule(TrainConfig.of().optim, 64000).warmup_steps == 0


def test_label_smoothing_is_the_mixture_of_cross_entropy_and_uniform():
    probs = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = tf.constant([0, 2])
    got = float(compiled.SmoothedCrossEntropy(0.1)(labels, probs))
    target = 0.9 * np.eye(3)[[0, 2]] + 0.1 / 3
    want = float(np.mean(-(target * np.log(probs.numpy())).sum(axis=1)))
    assert got == pytest.approx(want, rel=1e-5)
    cfg = TrainConfig.of(label_smoothing=0.1, nesterov=True)
    model = optimization.compile_model(build_model("resnet8"), cfg.optim, 100)
    assert isinstance(model.loss, compiled.SmoothedCrossEntropy) and model.optimizer.nesterov
    assert isinstance(optimization.loss(TrainConfig.of().optim), keras.losses.SparseCategoricalCrossentropy)


def test_zero_init_residual_starts_each_block_as_its_shortcut():
    zero = build_model("resnet8", zero_init_residual=True)
    last = [layer for layer in zero.layers if layer.name.endswith("_2_bn")]
    assert len(last) == 3 and all(np.all(layer.gamma.numpy() == 0) for layer in last)
    first = [layer for layer in zero.layers if layer.name.endswith("_1_bn")]
    assert all(np.all(layer.gamma.numpy() == 1) for layer in first)
    plain = build_model("plain8", zero_init_residual=True)  # a plain block would start as zero
    assert all(np.all(layer.gamma.numpy() == 1) for layer in plain.layers if layer.name.endswith("_bn"))


def test_weight_average_follows_its_update_rule_bn_statistics_included():
    model = optimization.compile_model(build_model("resnet8"), TrainConfig.of().optim, 100)
    model.optimizer.build(model.trainable_variables)
    average = callbacks.WeightAverage(model, decay=0.9)
    average.set_model(model)
    expected = [w.numpy() for w in model.weights]
    rng = np.random.default_rng(0)
    for t in (0, 1, 50):
        model.optimizer.iterations.assign(t)
        for w in model.weights:  # every weight moves, the BN moving statistics too
            w.assign(w.numpy() + rng.normal(size=w.shape).astype(np.float32))
        decay = min(0.9, (1 + t) / (10 + t))
        expected = [decay * e + (1 - decay) * w.numpy() for e, w in zip(expected, model.weights, strict=True)]
        average.on_train_batch_end(0)
    for e, a in zip(expected, average.average.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), e, rtol=1e-5, atol=1e-5)
    assert any("moving_variance" in w.path for w in average.average.weights)


@pytest.mark.slow
def test_weight_average_is_what_is_evaluated_saved_and_exported(tmp_path):
    cfg = TrainConfig.of(
        **TINY,
        train_steps=20,
        ema_decay=0.9,
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )
    summary = training.run(cfg, verbose=0)
    run = pathlib.Path(cfg.run.model_dir)
    manifest = json.loads((run / "checkpoints" / "state.json").read_text())
    assert manifest["average"] == "ckpt-20.average.weights.h5" and summary.weight_average
    # model.keras holds the average of the last checkpoint, not the last step's weights.
    saved = keras.models.load_model(run / "model.keras")
    raw = optimization.compile_model(build_model("resnet8", input_shape=(32, 32, 3)), cfg.optim, 20)
    averaged = optimization.compile_for_evaluation(callbacks.WeightAverage(raw, decay=0.9).average, cfg.optim)
    with warnings.catch_warnings():  # a resume restores the average whole, without Keras' warnings
        warnings.simplefilter("error", UserWarning)
        checkpoints.Checkpointer(run / "checkpoints", average=averaged).restore(raw)
    for s, a in zip(saved.weights, averaged.weights, strict=True):
        np.testing.assert_allclose(s.numpy(), a.numpy(), atol=1e-6)
    assert any(not np.allclose(s.numpy(), r.numpy()) for s, r in zip(saved.weights, raw.weights, strict=True))
    # The test error reported is the average's, and the export serves it.
    from keras_resnet import data

    ds = data.load("digits", batch_size=32, eval_batch_size=1000)
    saved.compile(loss="sparse_categorical_crossentropy", metrics=[compiled.TopKError(1)])
    assert saved.evaluate(ds.test, verbose=0, return_dict=True)["error"] == pytest.approx(summary.test_error)
    served = tf.saved_model.load(summary.export_path)
    x = next(iter(ds.test))[0][:4]
    pixels = x + ds.info.mean  # the serving signature takes 0-255 pixels and subtracts the mean itself
    got = served.signatures["predict_pixels"](pixels=pixels)["probabilities"].numpy()
    np.testing.assert_allclose(got, saved(x, training=False).numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", ["flip", "flip_translate"])
def test_test_time_augmentation_is_the_mean_over_the_views(mode):
    model = build_model("resnet8")
    for _ in range(3):  # move BN statistics off their initial values
        model(tf.random.uniform([8, 32, 32, 3], -1, 1), training=True)
    x = tf.random.uniform([4, 32, 32, 3], -1, 1)
    tta = models.with_test_time_augmentation(model, mode)
    views = []
    for flip, dy, dx in models.TTA_VIEWS[mode]:
        v = x[:, :, ::-1] if flip else x
        v = tf.pad(v, [[0, 0], [max(dy, 0), max(-dy, 0)], [max(dx, 0), max(-dx, 0)], [0, 0]])
        v = v[:, max(-dy, 0) : max(-dy, 0) + 32, max(-dx, 0) : max(-dx, 0) + 32]
        views.append(model(v, training=False).numpy())
    np.testing.assert_allclose(tta(x, training=False).numpy(), np.mean(views, axis=0), atol=1e-6)
    assert len(views) == {"flip": 2, "flip_translate": 6}[mode]
    assert models.with_test_time_augmentation(model, "none") is model


def test_cutout_zeroes_one_square_and_alternating_flips_alternate():
    images = tf.random.uniform([16, 12, 12, 3], 1, 255)
    mean = tf.zeros([12, 12, 3])
    seed = tf.constant([3, 4], tf.int64)
    plain = views.cifar_augment(images, mean, seed, pad=0, flips=tf.zeros([16], tf.bool)).numpy()
    np.testing.assert_allclose(plain, images.numpy())  # no translation, no flip: the image itself
    cut = views.cifar_augment(images, mean, seed, pad=0, flips=tf.zeros([16], tf.bool), cutout=4).numpy()
    zeroed = np.all(cut == 0, axis=-1)
    for mask in zeroed:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4  # one square, clipped at the borders
        assert mask.sum() == len(rows) * len(cols)
    index = tf.range(100, dtype=tf.int64)
    flips = [views.alternating_flips(index, epoch, seed=7).numpy() for epoch in range(3)]
    assert np.all(flips[0] != flips[1]) and np.all(flips[0] == flips[2])
    assert 30 < flips[0].sum() < 70  # which images start mirrored is mixed


@pytest.mark.slow
def test_evaluation_of_the_test_set_every_n_checkpoints(tmp_path):
    cfg = TrainConfig.of(**TINY, train_steps=40, eval_test_every=3, model_dir=str(tmp_path / "run"))
    training.run(cfg, verbose=0)
    import csv

    with open(tmp_path / "run" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    tested = [int(r["step"]) for r in rows if r.get("test_error")]
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40] and tested == [
        30,
        40,
    ]  # every 3rd, and the last


def test_precision_auto_and_the_callers_policy_survives():
    claimed = runtime.cpu_claims_bfloat16()
    if tf.config.list_physical_devices("GPU"):
        expected = "bfloat16"
    elif claimed:  # the flag is no promise: bfloat16 only where it measured faster
        speedup = precision.bfloat16_speedup()
        assert 0.05 < speedup < 20, speedup
        expected = "bfloat16" if speedup >= precision.BFLOAT16_MIN_SPEEDUP else "float32"
    else:
        expected = "float32"
    assert precision.resolve_precision("auto") == expected
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with precision.precision_policy("bfloat16") as resolved:
            assert resolved == "bfloat16" and keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"  # restored, not float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_new_flags_are_checked():
    for changes, flag in (
        ({"label_smoothing": 1.0}, "--label_smoothing"),
        ({"ema_decay": -0.1}, "--ema_decay"),
        ({"cutout": -1}, "--cutout"),
        ({"eval_test_every": 0}, "--eval_test_every"),
        ({"lr_warmup_steps": -5}, "--lr_warmup_steps"),
        ({"tta": "rotate"}, "--tta"),
        ({"low_res_size": 24}, "--low_res_epochs"),
        ({"low_res_size": 2, "low_res_epochs": 1}, "--low_res_size"),
    ):
        with pytest.raises(config.ConfigError, match=flag):
            TrainConfig.of(model_dir="x", train_steps=1, **changes).check()


def test_alternating_flips_mirror_every_training_image_every_other_epoch():
    from keras_resnet import data

    images, labels = digits_source._digits_images(32)
    train = images[splits.held_out_split(labels, digits_source.DIGITS_TEST_FRACTION)[0]]
    keys = [im.tobytes() for im in train]
    unique = {k for k in keys if keys.count(k) == 1}
    ds = data.load(
        "digits", batch_size=len(train), flip="alternating", translate=0, seed=5
    )  # a batch per epoch
    batches = iter(ds.train)
    status = []  # per epoch: {image: mirrored?}
    for _ in range(3):
        views = next(batches)[0].numpy()
        seen = {}
        for v in views:
            plain = np.rint(v + ds.info.mean).astype(np.uint8).tobytes()
            mirrored = np.rint(v[:, ::-1] + ds.info.mean).astype(np.uint8).tobytes()
            if (plain in unique) != (mirrored in unique):  # symmetric digits say nothing
                seen[plain if plain in unique else mirrored] = mirrored in unique
        status.append(seen)
    common = set(status[0]) & set(status[1]) & set(status[2])
    assert len(common) > 1000  # nearly every training digit, once per epoch
    # Training batches may arrive out of order (parallel map, deterministic=False), so which batch
    # is which epoch is unknown: between two whole epochs every digit flips, or none does, and
    # among three epochs two have one parity and one the other.
    changed = {(a, b): {status[a][k] != status[b][k] for k in common} for a, b in ((0, 1), (0, 2), (1, 2))}
    assert all(len(c) == 1 for c in changed.values()), changed
    assert sorted(c.pop() for c in changed.values()) == [False, True, True]
    assert 0.3 < np.mean([status[0][k] for k in common]) < 0.7  # which ones start mirrored is mixed


def test_low_resolution_epochs_are_the_same_batches_resized_then_full_size():
    from keras_resnet import data

    # 1438 digits, 2 steps of 719 per epoch, in order and unaugmented but for the resize.
    load = dict(batch_size=719, translate=0, flip="none", deterministic=True)
    low = dict(low_res_size=16, low_res_epochs=1, **load)
    full = [x.numpy() for x, _ in data.load("digits", **load).train.take(4)]
    small = [x.numpy() for x, _ in data.load("digits", **low).train.take(4)]
    assert [x.shape[1:3] for x in small] == [(16, 16), (16, 16), (32, 32), (32, 32)]
    for f, s in zip(full[:2], small[:2], strict=True):
        np.testing.assert_allclose(s, tf.image.resize(f, (16, 16), antialias=True).numpy(), atol=1e-5)
    np.testing.assert_array_equal(small[2], full[2])
    # A run resumed inside the low-resolution epochs finishes them small, then goes full size.
    resumed = data.load("digits", start_step=1, **low).train.take(2)
    assert [x.shape[1] for x, _ in resumed] == [16, 32]
    with pytest.raises(ValueError, match="--low_res_size=32"):
        data.load("digits", **{**low, "low_res_size": 32})


@pytest.mark.slow
def test_a_run_with_low_resolution_epochs_saves_and_exports_the_full_size_model(tmp_path):
    # 44 steps per epoch: the first 44 at 16 px, the last 16 at 32 px.
    cfg = TrainConfig.of(
        **TINY,
        train_steps=60,
        low_res_size=16,
        low_res_epochs=1,
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )
    summary = training.run(cfg, verbose=0)
    assert summary.steps == 60 and summary.test_error < 0.9  # it learned, at 32 px
    saved = keras.models.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert saved.input_shape == (None, 32, 32, 3)
    with pytest.raises(ValueError, match="incompatible"):  # the relaxed input check was not saved
        saved(np.zeros((1, 16, 16, 3), np.float32))
    from keras_resnet import data

    ds = data.load("digits", batch_size=32)
    x = next(iter(ds.test))[0][:4]
    served = tf.saved_model.load(summary.export_path).signatures["predict_pixels"]
    got = served(pixels=x + ds.info.mean)["probabilities"].numpy()
    np.testing.assert_allclose(got, saved(x, training=False).numpy(), atol=1e-5)


class _Clock:
    """perf_counter for a Progress driven by hand: seconds pass only when a test says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _driven(monkeypatch, total: int, **kwargs) -> tuple[progress.Progress, _Clock]:
    """A quiet Progress at step 0 of a run of `total` steps, on a clock of its own."""
    clock = _Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    bar = progress.Progress(total, 32, quiet=True, **kwargs)
    bar.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(iterations=np.int64(0))))
    bar.on_train_begin()
    return bar, clock


def _chunk(bar: progress.Progress, clock: _Clock, steps: int, seconds_each: float) -> None:
    bar.on_epoch_begin(0)
    for _ in range(steps):
        bar.on_train_batch_begin(0)
        clock.now += seconds_each
        bar.on_train_batch_end(0, {})
    bar.on_epoch_end(0, {})


def test_the_eta_counts_the_full_size_steps_still_to_come(monkeypatch):
    # 10 of 20 steps done in 40 s, the first 10 at a quarter of a full step's cost: 10 full steps
    # of 16 s remain, not 10 of 4 s.
    bar, clock = _driven(monkeypatch, 20, cheap_steps=(10, 0.25))
    _chunk(bar, clock, 10, 4.0)
    assert bar.eta() == "2m40s"
    bar.cheap_steps = (0, 1.0)
    assert bar.eta() == "40s"


def test_the_eta_forgets_a_pause_after_a_few_chunks(monkeypatch):
    # Chunks of 10 steps of 1 s, and a 15-minute stop (Ctrl-Z, a sleeping machine) after the
    # first: the pause counts until ETA_CHUNKS chunks have passed since, then the 30 steps left
    # take 30 s (the whole process's rate: 970 s / 70 steps each, 6m56s).
    bar, clock = _driven(monkeypatch, 100)
    _chunk(bar, clock, 10, 1.0)
    clock.now += 900
    for _ in range(progress.ETA_CHUNKS):
        _chunk(bar, clock, 10, 1.0)
    assert bar.eta() == "12m40s"  # 950 s over the 50 steps since the first chunk, 40 to go
    _chunk(bar, clock, 10, 1.0)
    assert bar.eta() == "30s"


def test_bn_momentum_is_every_batch_norms_and_its_moving_statistics_follow_it():
    default = build_model("resnet8")  # build_model's default is the config's: the paper's 0.9
    moments = {la.momentum for la in default.layers if isinstance(la, keras.layers.BatchNormalization)}
    assert moments == {TrainConfig.of().model.bn_momentum} == {0.9}
    cfg = TrainConfig.of(bn_momentum=0.5)
    model = models.build_from_config(cfg.model, num_classes=2, input_shape=(8, 8, 3), weight_decay=0)
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and {bn.momentum for bn in bns} == {0.5}
    x = np.random.default_rng(0).normal(2.0, 1.0, (4, 8, 8, 3)).astype("float32")
    stem = keras.Model(model.input, model.get_layer("conv1_conv").output)(x).numpy()
    model(x, training=True)
    # moving <- 0.5 moving + 0.5 batch, from 0: half the batch's mean
    want = 0.5 * stem.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(model.get_layer("conv1_bn").moving_mean.numpy(), want, rtol=1e-4, atol=1e-5)
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(config.ConfigError, match="--bn_momentum"):
            TrainConfig.of(model_dir="x", train_steps=1, bn_momentum=bad).check()


@pytest.mark.parametrize("replicas", [1, 2])
def test_bn_lr_multiplier_moves_bn_parameters_that_many_times_as_far_and_nothing_else(
    replicas, mirrored_strategy
):
    strategy = mirrored_strategy if replicas == 2 else tf.distribute.get_strategy()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 8)
    with strategy.scope():
        init = build_model("resnet8", num_classes=2, input_shape=(8, 8, 3)).get_weights()
    moved = {}
    for flags in ({}, {"bn_lr_multiplier": 4.0}, {"bn_lr_multiplier": 4.0, "freeze_bn_scale": True}):
        cfg = TrainConfig.of(learning_rate=0.05, nesterov=True, **flags)
        with strategy.scope():
            model = build_model("resnet8", num_classes=2, input_shape=(8, 8, 3))
            model.set_weights(init)
            optimization.compile_model(model, cfg.optim, 100)
        model.train_on_batch(x, y)
        moved[tuple(flags)] = {w.path: w.numpy() - w0 for w, w0 in zip(model.weights, init, strict=True)}
    plain, scaled, frozen = moved.values()
    for path, step in plain.items():
        name = path.rsplit("/", 1)[-1]
        # The first step of momentum SGD is -lr * gradient: 4x the rate is 4x the step.
        factor = {"beta": 4.0, "gamma": 4.0}.get(name, 1.0)
        # atol: gamma starts at 1, where float32 resolves 1.2e-7; the steps are 1e-4 to 1e-2.
        np.testing.assert_allclose(scaled[path], factor * step, rtol=1e-4, atol=1e-6, err_msg=path)
        if name == "gamma":
            assert np.all(frozen[path] == 0) and np.abs(step).max() > 1e-4
        elif name == "beta":
            np.testing.assert_allclose(frozen[path], 4.0 * step, rtol=1e-4, atol=1e-6, err_msg=path)
    # The default run's optimizer is the one it always was.
    assert type(optimization.optimizer(TrainConfig.of().optim, 100)) is keras.optimizers.SGD


def test_bn_lr_multiplier_flags_are_checked_and_the_optimizer_saves(tmp_path):
    with pytest.raises(config.ConfigError, match="--bn_lr_multiplier"):
        TrainConfig.of(model_dir="x", train_steps=1, bn_lr_multiplier=0.0).check()
    with pytest.raises(config.ConfigError, match="--freeze_bn_scale with --zero_init_residual"):
        TrainConfig.of(model_dir="x", train_steps=1, freeze_bn_scale=True, zero_init_residual=True).check()
    cfg = TrainConfig.of(bn_lr_multiplier=2.0, freeze_bn_scale=True)
    model = build_model("resnet8", num_classes=2, input_shape=(8, 8, 3))
    optimization.compile_model(model, cfg.optim, 9)
    model.train_on_batch(np.zeros((2, 8, 8, 3), "float32"), np.zeros(2, "int32"))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.optimizer.lr_multipliers == {"beta": 2.0, "gamma": 0.0}


def test_ghost_batch_norm_normalizes_each_group_alone_and_infers_as_before():
    from keras_resnet.models.layers import BatchNormalization

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4, 4, 3)).astype("float32") * rng.uniform(0.5, 3, 8)[:, None, None, None]
    gamma, beta = rng.uniform(0.5, 2, 3).astype("float32"), rng.normal(size=3).astype("float32")
    ghost, whole = BatchNormalization(ghost_batch_size=2, momentum=0.8), BatchNormalization(momentum=0.8)
    for layer in (ghost, whole):
        layer.build(x.shape)
        layer.set_weights([gamma, beta, np.zeros(3, "float32"), np.ones(3, "float32")])
    got = ghost(x, training=True).numpy()
    pairs = x.reshape(4, 2, 4, 4, 3)
    mean, var = pairs.mean(axis=(1, 2, 3), keepdims=True), pairs.var(axis=(1, 2, 3), keepdims=True)
    want = ((pairs - mean) / np.sqrt(var + ghost.epsilon) * gamma + beta).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(got - whole(x, training=True).numpy()).max() > 0.1  # not the whole batch's statistics
    # The moving statistics follow the mean of the pairs' statistics.
    np.testing.assert_allclose(ghost.moving_mean.numpy(), 0.2 * mean.mean(axis=0).ravel(), atol=1e-5)
    np.testing.assert_allclose(ghost.moving_variance.numpy(), 0.8 + 0.2 * var.mean(axis=0).ravel(), atol=1e-5)
    whole.set_weights(ghost.get_weights())
    np.testing.assert_allclose(ghost(x, training=False).numpy(), whole(x, training=False).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="--ghost_batch_size=2 must divide .* --batch_size"):
        ghost(x[:5], training=True)
    assert BatchNormalization.from_config(ghost.get_config()).ghost_batch_size == 2


def test_ghost_batch_size_must_divide_each_replicas_batch(mirrored_strategy):
    from keras_resnet.training import distribution

    check = dict(model_dir="x", train_steps=1)
    for changes, share in (
        ({"batch_size": 128, "ghost_batch_size": 48}, "--batch_size=128"),
        ({"batch_size": 64, "ghost_batch_size": 64, "cpu_devices": 2}, "32 per replica of --batch_size=64"),
    ):
        with pytest.raises(config.ConfigError, match=f"--ghost_batch_size=.* must divide {share}"):
            TrainConfig.of(**check, **changes).check()
    with pytest.raises(config.ConfigError, match="--sync_bn"):
        TrainConfig.of(**check, ghost_batch_size=4, sync_bn=True).check()
    cfg = TrainConfig.of(**check, batch_size=32, ghost_batch_size=32, distribution="mirrored")
    cfg.check()  # the replicas are known once the strategy is: conftest's two CPUs
    with pytest.raises(config.ConfigError, match="must divide 16 per replica of --batch_size=32"):
        distribution.strategy_for(cfg)
    # Per replica 8 examples in ghost batches of 4: trains, and ResNet-20 keeps its 269,722 parameters.
    with mirrored_strategy.scope():
        model = build_model("resnet8", num_classes=2, input_shape=(8, 8, 3), ghost_batch_size=4)
        model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    model.fit(x, np.zeros(16, "int32"), batch_size=16, epochs=1, verbose=0)
    assert all(la.ghost_batch_size == 4 for la in model.layers if hasattr(la, "ghost_batch_size"))
    levers = TrainConfig.of(ghost_batch_size=32, bn_momentum=0.8).model
    r20 = models.build_from_config(levers, num_classes=10, input_shape=(32, 32, 3), weight_decay=1e-4)
    assert models.count(r20).params == 269_722


def _correlated_images(n: int, size: int = 12, seed: int = 0) -> np.ndarray:
    """Colour images whose neighbouring pixels and channels correlate, as photographs' do."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size + 2, size + 2, 3))
    x = (x[:, 1:, :] + x[:, :-1, :]) / 2  # vertical, horizontal and colour correlation
    x = (x[:, :, 1:] + x[:, :, :-1]) / 2
    x = x @ np.array([[1.0, 0.6, 0.3], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    return (40.0 * x[:, :size, :size]).astype("float32")


def test_pca_stem_whitens_the_training_patches():
    from keras_resnet.models import whitening

    images = _correlated_images(256)
    model = build_model("resnet8", num_classes=2, input_shape=(12, 12, 3))
    stem = whitening.whiten_stem(model, [images[:100], images[100:]])  # batches, as the pipeline gives
    assert stem.name == "conv1_conv" and stem.kernel.shape == (3, 3, 3, 16)
    # The stem as Keras applies it (its interior: no zero padding), on the images it was fitted to.
    out = keras.Model(model.input, stem.output)(images).numpy()[:, 1:-1, 1:-1].reshape(-1, 16)
    cov = np.cov(out, rowvar=False)
    np.testing.assert_allclose(cov, np.diag(np.diag(cov)), atol=1e-3)  # decorrelated
    assert 0.95 < np.diag(cov).min() and np.diag(cov).max() < 1.0 + 1e-3  # unit variance, but for eps
    raw = np.corrcoef(whitening.patches(images, 3), rowvar=False)
    assert np.abs(raw - np.eye(27)).max() > 0.5  # the patches themselves are far from it
    with pytest.raises(ValueError, match="16 filters cannot whiten 9-dimensional"):
        whitening.whitening_kernel([images[..., :1]], 3, 16)


def test_stem_init_flag_is_checked():
    assert TrainConfig.of().model.stem_init == "he"
    for changes, flag in (
        ({"stem_init": "zca"}, "--stem_init"),
        ({"stem_init": "pca", "weights": "cifar10"}, "--weights"),
    ):
        with pytest.raises(config.ConfigError, match=flag):
            TrainConfig.of(model_dir="x", train_steps=1, **changes).check()


@pytest.mark.slow
def test_a_fresh_run_whitens_its_stem_from_its_own_pipeline_and_a_resumed_one_does_not(tmp_path, monkeypatch):
    from keras_resnet import data
    from keras_resnet.models import whitening

    # conv1 frozen, so the run's stem is still its initialisation at the end.
    cfg = TrainConfig.of(
        **{**TINY, "checkpoint_steps": 2},
        train_steps=2,
        stem_init="pca",
        freeze=("conv1",),
        model_dir=str(tmp_path / "run"),
    )
    training.run(cfg, verbose=0)
    saved = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    sample = data.load_config(cfg.data).train_sample(whitening.IMAGES)
    want = whitening.whitening_kernel((x.numpy() for x, _ in sample), 3, 16)
    np.testing.assert_allclose(saved.get_layer("conv1_conv").kernel.numpy(), want, rtol=1e-5, atol=1e-6)

    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run must take its stem from the checkpoint")

    monkeypatch.setattr(whitening, "whiten_stem", refuse)
    assert training.run(cfg.replace(train_steps=4, allow_config_change=True), verbose=0).steps == 4


def _parse_flags(lines: list[str]) -> dict:
    """train.py's flags (`--name=value`, `--name`, `--noname`) as `TrainConfig.of` takes them."""
    defaults = TrainConfig.of().flags()
    values = {}
    for line in (line.strip() for line in lines):
        if not line.startswith("--"):  # comments
            continue
        name, equals, value = line.removeprefix("--").partition("=")
        if not equals:
            on = name in defaults
            values[name if on else name.removeprefix("no")] = on
        elif isinstance(defaults[name], tuple):
            values[name] = tuple(v for v in value.split(",") if v)
        else:
            values[name] = type(defaults[name])(value)
    return values


def test_every_ablation_row_is_a_valid_run_of_the_preset_and_resnet20_as_ever():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablate_recipe", REPO / "bench" / "ablate_recipe.py")
    ablate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablate)
    preset = (REPO / "configs" / "cifar10_resnet20_fast.cfg").read_text().splitlines()
    budget = ["--epochs=4", "--lr_warmup_steps=105", "--low_res_epochs=2"]  # the docstring's command
    base = TrainConfig.of(**_parse_flags(preset + budget), validation_split=True, model_dir="x")
    for row, flags in ablate.LEVERS.items():
        cfg = base.replace(**_parse_flags(flags))
        cfg.check()
        assert (cfg == base) == (row == "preset"), row  # every other row changes something
        model = models.build_from_config(cfg.model, num_classes=10, input_shape=(32, 32, 3), weight_decay=0)
        assert models.count(model).params == 269_722, row
    assert base.replace(**_parse_flags(ablate.LEVERS["low-res 3/4"])).data.low_res_epochs == 3
