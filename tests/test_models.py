"""The model zoo against the paper's tables and the reference counts."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr
from keras_resnet.models import specs
from keras_resnet.models.folding import fold_batch_norm

# Trainable parameters as the paper and torchvision count them (CIFAR: 10 classes, ImageNet: 1000).
REFERENCE_PARAMS = {
    ("resnet20", "A"): 269_722,
    ("resnet56", "A"): 853_018,
    ("resnet110", "A"): 1_727_962,
    ("resnet18", "B"): 11_689_512,
    ("resnet34", "B"): 21_797_672,
    ("resnet50", "B"): 25_557_032,
    ("resnet101", "B"): 44_549_160,
    ("resnet152", "B"): 60_192_808,
}
# Table 1, multiply-adds at 224x224 ("FLOPs" in the paper).
TABLE1_MACS = {
    "resnet18": 1.8e9,
    "resnet34": 3.6e9,
    "resnet50": 3.8e9,
    "resnet101": 7.6e9,
    "resnet152": 11.3e9,
}


def trainable(model: keras.Model) -> int:
    return sum(math.prod(w.shape) for w in model.trainable_weights)


@pytest.mark.parametrize(("name", "shortcut"), sorted(REFERENCE_PARAMS))
def test_reference_parameter_counts(name, shortcut):
    model = kr.build_model(name, shortcut=shortcut)
    assert trainable(model) == REFERENCE_PARAMS[(name, shortcut)]
    assert kr.count(model).params == REFERENCE_PARAMS[(name, shortcut)]


@pytest.mark.parametrize("name", sorted(TABLE1_MACS))
def test_multiply_adds_match_table1(name):
    macs = kr.count(kr.build_model(name)).macs
    assert macs == pytest.approx(TABLE1_MACS[name], rel=0.05)


def test_cifar_resnet20_multiply_adds():
    # 41 M: the usual figure for ResNet-20 on 32x32.
    assert kr.count(kr.build_model("resnet20")).macs == pytest.approx(41e6, rel=0.03)


def test_count_table_lists_layers_and_total():
    report = kr.count(kr.build_model("resnet20"))
    table = report.table()
    assert "conv4_block3_2_conv" in table and table.splitlines()[-1].startswith("total")
    assert f"{report.params:,}" in table.splitlines()[-1]
    # Per-layer rows add up to the total, and the stem conv is 3*3*3*16 weights.
    assert sum(r.params for r in report.layers) == report.params
    stem = next(r for r in report.layers if r.name == "conv1_conv")
    assert stem.params == 3 * 3 * 3 * 16 and stem.macs == 32 * 32 * 3 * 3 * 3 * 16


@pytest.mark.parametrize("depth", [20, 34, 50])
def test_plain_twin_and_shortcut_ordering(depth):
    counts = {s: trainable(kr.build_model(f"resnet{depth}", shortcut=s)) for s in "ABC"}
    assert trainable(kr.build_model(f"plain{depth}")) == counts["A"]
    assert counts["A"] < counts["B"] < counts["C"]


def test_plain_net_has_no_shortcuts_and_same_layers():
    plain, res = kr.build_model("plain20"), kr.build_model("resnet20")
    assert not any(isinstance(layer, keras.layers.Add) for layer in plain.layers)
    assert sum(isinstance(layer, keras.layers.Add) for layer in res.layers) == 9
    convs = lambda m: [la.name for la in m.layers if isinstance(la, keras.layers.Conv2D)]  # noqa: E731
    assert convs(plain) == convs(res)  # option A adds no convolution


@pytest.mark.parametrize("training", [True, False])  # pooled in training, sliced in inference
@pytest.mark.parametrize("size", [4, 5])
def test_zero_pad_shortcut_exact_tensor_and_gradient(size, training):
    import tensorflow as tf

    x = tf.constant(np.arange(2 * size * size * 3, dtype="float32").reshape(2, size, size, 3))
    layer = kr.ZeroPadShortcut(filters=5, strides=2)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * tf.reshape(tf.range(tf.size(y), dtype=y.dtype), y.shape))
    half = -(-size // 2)
    assert y.shape == (2, half, half, 5) == layer.compute_output_shape(x.shape)
    np.testing.assert_array_equal(y[..., :3], x.numpy()[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0.0)
    # The gradient reaches exactly the kept pixels, each with its output's weight.
    expected = np.zeros(x.shape, "float32")
    expected[:, ::2, ::2, :] = np.arange(y.shape.num_elements()).reshape(y.shape)[..., :3]
    np.testing.assert_array_equal(tape.gradient(loss, x), expected)


@pytest.mark.parametrize("padding, picks", [("symmetric", [0, 2, 8, 10]), ("same", [5, 7, 13, 15])])
def test_a_strided_3x3_convolution_reads_where_its_shortcut_does(padding, picks):
    # A 3x3 kernel that copies its centre pixel, stride 2, on a 4x4 image numbered 0..15: the
    # paper's symmetric padding centres it on (2i, 2j), the pixels option A's shortcut keeps.
    model = kr.build_model("resnet8", input_shape=(4, 4, 1), padding=padding)
    image = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    conv = model.get_layer("conv3_block1_1_conv")
    inputs = keras.Input((4, 4, 1))
    x = model.get_layer("conv3_block1_1_pad")(inputs) if padding == "symmetric" else inputs
    probe = keras.layers.Conv2D(1, 3, strides=2, padding=conv.padding, use_bias=False)
    y = probe(x)
    probe.kernel.assign(np.pad(np.ones((1, 1, 1, 1), "float32"), [(1, 1), (1, 1), (0, 0), (0, 0)]))
    got = keras.Model(inputs, y)(image).numpy().ravel()
    np.testing.assert_array_equal(got, picks)
    shortcut = keras.ops.convert_to_numpy(kr.ZeroPadShortcut(1, 2)(image)).ravel()
    assert (shortcut.tolist() == got.tolist()) == (padding == "symmetric")


def test_padding_changes_no_shape_or_count_and_pads_the_stem_as_keras_applications():
    for name in ("resnet18", "resnet20"):
        sym, same = kr.build_model(name), kr.build_model(name, padding="same")
        assert trainable(sym) == trainable(same) and kr.count(sym).macs == kr.count(same).macs
        assert [la.output.shape for la in sym.layers if not isinstance(la, keras.layers.ZeroPadding2D)] == [
            la.output.shape for la in same.layers
        ]
        assert not any(isinstance(la, keras.layers.ZeroPadding2D) for la in same.layers)
    r18 = kr.build_model("resnet18")
    pads = {la.name: la.padding for la in r18.layers if isinstance(la, keras.layers.ZeroPadding2D)}
    assert pads["conv1_pad"] == ((3, 3), (3, 3)) and pads["pool1_pad"] == ((1, 1), (1, 1))
    assert set(pads) == {
        "conv1_pad",
        "pool1_pad",
        "conv3_block1_1_pad",
        "conv4_block1_1_pad",
        "conv5_block1_1_pad",
    }
    odd = kr.build_model("resnet18", input_shape=(225, 225, 3))  # odd sizes: "same"'s shapes too
    assert odd.get_layer("conv2_block1_out").output.shape[1] == 57


def test_option_a_block_uses_zero_padding_where_shape_changes():
    model = kr.build_model("resnet20", shortcut="A")
    pads = [la for la in model.layers if isinstance(la, kr.ZeroPadShortcut)]
    assert [la.name for la in pads] == ["conv3_block1_0_pad", "conv4_block1_0_pad"]
    assert [(la.filters, la.strides) for la in pads] == [(32, 2), (64, 2)]


def test_option_b_and_c_projection_placement():
    b = {la.name for la in kr.build_model("resnet20", shortcut="B").layers}
    c = {la.name for la in kr.build_model("resnet20", shortcut="C").layers}
    assert {n for n in b if n.endswith("_0_conv")} == {"conv3_block1_0_conv", "conv4_block1_0_conv"}
    assert len({n for n in c if n.endswith("_0_conv")}) == 9
    # Bottleneck nets change width in the first block of conv2, so B projects there too.
    r50 = {la.name for la in kr.build_model("resnet50", shortcut="B").layers}
    assert {n for n in r50 if n.endswith("_0_conv")} == {f"conv{s}_block1_0_conv" for s in range(2, 6)}


def test_paper_details_bn_after_every_conv_no_bias_he_init_and_decay():
    model = kr.build_model("resnet50", weight_decay=1e-4)
    names = {la.name for la in model.layers}
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    for conv in convs:
        assert not conv.use_bias
        assert conv.name.replace("_conv", "_bn") in names
        # L2(wd/2): its gradient is SGD's weight decay wd * w.
        assert conv.kernel_regularizer.l2 == pytest.approx(5e-5)
    # He initialisation: std sqrt(2 / fan_in) on the largest kernel (2.4 M samples).
    kernel = model.get_layer("conv5_block1_2_conv").kernel.numpy()
    assert kernel.std() == pytest.approx(math.sqrt(2 / (3 * 3 * 512)), rel=0.01)
    assert not kr.build_model("resnet20", weight_decay=0).losses


def test_bottleneck_stride_placement():
    v1 = kr.build_model("resnet50")
    v15 = kr.build_model("resnet50", bottleneck_stride="3x3")
    assert v1.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert v1.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert v15.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert v15.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert trainable(v1) == trainable(v15)
    assert kr.count(v15).macs > kr.count(v1).macs


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n == "plain1202" else n  # 1,202 layers: 36 s to build
        for n in specs.list_models()
        if n != "resnet1202"  # test_resnet1202_builds_counts_and_runs
    ],
)
def test_forward_shapes_for_every_named_model(name):
    spec = specs.get_spec(name)
    # ImageNet nets run at 64x64 here to stay fast: the shapes follow the same strides.
    size = 32 if spec.family == specs.CIFAR else 64
    model = kr.build_model(name, num_classes=7, input_shape=(size, size, 3))
    feature = model.get_layer("avg_pool").input
    expected_width = spec.stages[-1][1] * (4 if spec.stages[-1][0] == specs.BOTTLENECK else 1)
    assert tuple(feature.shape[1:]) == ((8, 8) if spec.family == specs.CIFAR else (2, 2)) + (expected_width,)
    # Training mode: BN normalises with batch statistics, as at the start of training. In inference
    # mode an untrained plain-1202's activations can overflow, which is the paper's point.
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    probs = model(x, training=True)
    assert probs.shape == (2, 7)
    np.testing.assert_allclose(keras.ops.sum(probs, axis=-1), 1.0, rtol=1e-5)


def test_any_cifar_depth_and_family_override():
    assert trainable(kr.build_model("resnet8")) < trainable(kr.build_model("resnet14"))
    cifar50 = kr.build_model("resnet50", family="cifar")
    assert cifar50.name == "cifar_resnet50" and cifar50.input_shape == (None, 32, 32, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet21"}, r"6n\+2"),
        ({"name": "resnet21"}, "resnet20"),
        ({"name": "vgg16"}, "Available: resnet18"),
        ({"name": "resnet18", "family": "imagenet", "shortcut": "D"}, "expected one of A, B, C"),
        ({"name": "resnet20", "family": "imagenet"}, "ImageNet depth must be one of"),
        ({"name": "resnet20", "family": "svhn"}, "Unknown family"),
        ({"name": "resnet20", "bottleneck_stride": "2x2"}, "bottleneck_stride"),
        ({"name": "resnet20", "num_classes": 0}, "num_classes"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kr.build_model(**kwargs)


def test_save_load_safe_mode_round_trip(tmp_path):
    model = kr.build_model("resnet8", shortcut="A", num_classes=3)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [la.name for la in loaded.layers] == [la.name for la in model.layers]


def test_builds_under_mirrored_strategy(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        model = kr.build_model("resnet8", shortcut="B")
    assert strategy.num_replicas_in_sync == 2
    assert all(
        isinstance(v.value, tf.distribute.DistributedValues) or "Mirrored" in type(v.value).__name__
        for v in model.trainable_weights[:3]
    )


@pytest.mark.slow
def test_resnet1202_builds_counts_and_runs():
    # Deeper than Python's default recursion limit for Keras' graph walks: the builder raises it.
    model = kr.build_model("resnet1202")
    # 200 blocks per stage; the paper quotes 19.4 M parameters.
    assert trainable(model) == pytest.approx(19.4e6, rel=0.01)
    assert sum(isinstance(la, keras.layers.Conv2D) for la in model.layers) == 1201
    assert model(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 10)


@pytest.mark.parametrize("sync_bn", [False, True])
def test_bn_moving_statistics_agree_across_replicas(sync_bn, mirrored_strategy):
    # Plain Keras BN lets each replica's moving statistics drift apart; ours averages the updates.
    strategy = mirrored_strategy
    with strategy.scope():
        model = kr.build_model("resnet8", num_classes=2, input_shape=(8, 8, 3), sync_bn=sync_bn)
        model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype("float32")
    x[8:] += 2.0  # the two replicas see differently distributed halves
    model.fit(x, np.zeros(16, "int32"), batch_size=16, epochs=2, shuffle=False, verbose=0)
    bn = model.get_layer("conv1_bn")
    replicas = [t.numpy() for t in strategy.experimental_local_results(bn.moving_mean.value)]
    np.testing.assert_allclose(replicas[0], replicas[1], rtol=1e-6)
    assert np.abs(replicas[0]).sum() > 0  # the statistics did move
    assert bn.synchronized == sync_bn


FLOAT_TOL = {"float32": 1e-4, "float64": 1e-6}  # float16 and bfloat16: 2e-2


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "bfloat16", "float16", "float64"])
def test_fused_batch_norm_matches_keras_computation(policy):
    # The fused kernel (training only) must give Keras' own results: outputs, gradients and the
    # moving statistics, which Keras updates with the biased batch variance.
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 3.0, size=(8, 5, 5, 4)).astype("float32"))
    target = tf.constant(rng.normal(size=(8, 5, 5, 4)).astype("float32"))
    gamma, beta = rng.uniform(0.5, 2.0, 4).astype("float32"), rng.normal(size=4).astype("float32")
    results = {}
    for fused in (False, True):
        layer = kr.BatchNormalization(momentum=0.9, epsilon=1e-5, fused=fused, dtype=policy)
        layer.build(x.shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)

        @tf.function
        def step(inputs, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                y = layer(inputs, training=True)
                loss = tf.reduce_sum(tf.square(tf.cast(y, "float32") - target))
            return y, tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])

        ops_used = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
        assert ("FusedBatchNormV3" in ops_used) == (fused and policy != "float64")  # no float64 kernel
        y, grads = step(x)
        results[fused] = [y, *grads, layer.moving_mean, layer.moving_variance]
        assert y.dtype == keras.DTypePolicy(policy).compute_dtype
    tol = FLOAT_TOL.get(policy, 2e-2)
    for unfused, fused in zip(results[False], results[True], strict=True):
        np.testing.assert_allclose(
            np.asarray(tf.cast(fused, "float32")), np.asarray(tf.cast(unfused, "float32")), rtol=tol, atol=tol
        )


def test_fused_batch_norm_falls_back_where_it_cannot_apply():
    def fused_in_graph(layer, x, training=True):
        fn = tf.function(lambda inputs: layer(inputs, training=training))
        return "FusedBatchNormV3" in {op.type for op in fn.get_concrete_function(x).graph.get_operations()}

    x4 = tf.zeros((2, 4, 4, 3))
    assert fused_in_graph(kr.BatchNormalization(), x4)
    assert not fused_in_graph(kr.BatchNormalization(), x4, training=False)  # inference: moving statistics
    assert not fused_in_graph(kr.BatchNormalization(synchronized=True), x4)
    assert not fused_in_graph(kr.BatchNormalization(axis=1), x4)  # channels first
    frozen = kr.BatchNormalization()
    frozen.build(x4.shape)
    frozen.trainable = False  # frozen layers normalise with their moving statistics, as Keras'
    assert not fused_in_graph(frozen, x4)
    x = np.random.default_rng(0).normal(size=(6, 4, 3)).astype("float32")  # 3-D
    layer = kr.BatchNormalization()
    assert not fused_in_graph(layer, tf.constant(x))
    ref = (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + layer.epsilon)
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), ref, rtol=1e-4, atol=1e-4)
    config = kr.build_model("resnet8").get_layer("conv1_bn").get_config()
    assert config["fused"] is True
    assert kr.BatchNormalization.from_config({**config, "fused": False}).fused is False


def test_fused_and_unfused_models_train_alike():
    # The claim behind fused_bn's default: a model trains the same with or without the fused kernel.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, 16)
    trained = []
    for fused_bn in (False, True):
        keras.utils.set_random_seed(7)
        model = kr.build_model("resnet8", num_classes=4, input_shape=(16, 16, 3), fused_bn=fused_bn)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        trained.append((losses, model.get_weights()))
    (loss_a, weights_a), (loss_b, weights_b) = trained
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-4)
    assert loss_a[-1] < loss_a[0]
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def _random_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    """Every BN given random scales, offsets and moving statistics, far from the identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            stats = (
                rng.uniform(0.5, 1.5, c),
                rng.normal(0, 0.2, c),
                rng.normal(0, 0.2, c),
                rng.uniform(0.5, 2, c),
            )
            layer.set_weights([s.astype(np.float32) for s in stats])
    return model


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet20", {}),
        ("plain20", {}),
        ("resnet14", {"shortcut": "C"}),
        ("resnet18", {"input_shape": (64, 64, 3), "num_classes": 7}),
        ("resnet50", {"input_shape": (64, 64, 3), "include_top": False, "pooling": "avg"}),
    ],
)
def test_folded_network_computes_what_the_trained_one_does_without_batch_norm(name, kwargs):
    model = _random_statistics(kr.build_model(name, classifier_activation=None, **kwargs))
    folded = fold_batch_norm(model)
    assert not [la for la in folded.layers if isinstance(la, keras.layers.BatchNormalization)]
    convs = [la.name for la in model.layers if isinstance(la, keras.layers.Conv2D)]
    assert all(folded.get_layer(c).use_bias for c in convs)
    assert trainable(folded) == trainable(model) - sum(
        la.gamma.shape[0] for la in model.layers if isinstance(la, keras.layers.BatchNormalization)
    )
    x = np.random.default_rng(1).uniform(-120, 130, (4, *model.input_shape[1:])).astype(np.float32)
    want, got = model(x, training=False).numpy(), folded(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_folded_network_is_float32_and_loads_with_safe_mode(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _random_statistics(kr.build_model("resnet8"))
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    folded = fold_batch_norm(model)
    assert {la.dtype_policy.name for la in folded.layers} == {"float32"}
    folded.save(tmp_path / "folded.keras")
    loaded = keras.saving.load_model(tmp_path / "folded.keras", safe_mode=True)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), folded(x).numpy(), atol=1e-6)
