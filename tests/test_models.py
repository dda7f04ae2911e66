"""Tests for tfmagic.models: parameter counts, shapes, downscale activations, squeeze-excite,
stochastic depth, attention pooling, errors, saving."""

from __future__ import annotations

import doctest
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from outputs import inference

from tfmagic import models
from tfmagic.layers import AttentionPooling, DropPath, SqueezeExcite
from tfmagic.models import (
    DOWNSCALE_ACTIVATIONS,
    MODEL_NAMES,
    POOLING_TYPES,
    build_model,
    common,
    mobilenet,
    mobilenet_small,
    resnet,
    resnet20,
    resnet56,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Parameter counts computed by hand from the architecture specification. Batch norm holds four
# vectors per channel (gamma, beta, moving mean, moving variance); model.count_params() counts
# all of them.


def conv_params(kernel: int, in_channels: int, out_channels: int) -> int:
    return kernel * kernel * in_channels * out_channels


def bn_params(channels: int) -> int:
    return 4 * channels


def dense_params(in_features: int, num_classes: int) -> int:
    return in_features * num_classes + num_classes


def se_params(channels: int, reduced: int) -> int:
    """Squeeze-excite on `channels` with a `reduced`-wide bottleneck: two dense layers."""
    return channels * reduced + reduced + reduced * channels + channels


def se_width(channels: int) -> int:
    """A quarter of `channels` (a multiple of 8 here, so exact), at least 8."""
    return max(8, channels // 4)


def resnet_params(
    blocks: int, in_channels: int, num_classes: int, filters: tuple, se: bool = True
) -> int:
    total = conv_params(3, in_channels, filters[0]) + bn_params(filters[0])
    previous = filters[0]
    for stage, stage_filters in enumerate(filters):
        for block in range(blocks):
            total += conv_params(3, previous, stage_filters) + bn_params(stage_filters)
            total += conv_params(3, stage_filters, stage_filters) + bn_params(stage_filters)
            if se:  # on the block's output channels
                total += se_params(stage_filters, se_width(stage_filters))
            # Projection shortcut where the block subsamples (stride 2) or changes channels.
            if (stage > 0 and block == 0) or previous != stage_filters:
                total += conv_params(1, previous, stage_filters) + bn_params(stage_filters)
            previous = stage_filters
    return total + dense_params(filters[-1], num_classes)


# MobileNetV2's table (expansion, channels, blocks); strides do not change parameter counts.
MOBILENET_PLAN = (
    (1, 16, 1),
    (6, 24, 2),
    (6, 32, 3),
    (6, 64, 4),
    (6, 96, 3),
    (6, 160, 3),
    (6, 320, 1),
)


def mobilenet_params(
    in_channels: int, num_classes: int, stem: int, channels: tuple, head: int, se: bool = True
) -> int:
    total = conv_params(3, in_channels, stem) + bn_params(stem)
    previous = stem
    for (expansion, _, blocks), out_channels in zip(MOBILENET_PLAN, channels, strict=True):
        for _ in range(blocks):
            hidden = previous * expansion
            if expansion != 1:
                total += conv_params(1, previous, hidden) + bn_params(hidden)
            total += 9 * hidden + bn_params(hidden)
            if se:  # on the expanded channels, a quarter of the block's input wide
                total += se_params(hidden, se_width(previous))
            total += conv_params(1, hidden, out_channels) + bn_params(out_channels)
            previous = out_channels
    total += conv_params(1, previous, head) + bn_params(head)
    return total + dense_params(head, num_classes)


MOBILENET_WIDTH_1 = dict(stem=32, channels=tuple(c for _, c, _ in MOBILENET_PLAN), head=1280)


@pytest.mark.parametrize("se", [True, False])
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_parameter_counts_at_width_1_match_formulas(input_shape, se):
    channels = input_shape[-1]
    counts = {
        "resnet8": resnet_params(1, channels, 10, (16, 32, 64), se),
        "resnet20": resnet_params(3, channels, 10, (16, 32, 64), se),
        "resnet56": resnet_params(9, channels, 10, (16, 32, 64), se),
        "mobilenet_small": mobilenet_params(channels, 10, **MOBILENET_WIDTH_1, se=se),
    }
    for name, expected in counts.items():
        kwargs = {} if se else {"se": False}  # SE is on by default
        assert build_model(name, input_shape, 10, **kwargs).count_params() == expected, name
    # The numbers written in the docstrings and the README.
    documented = {
        ((28, 28, 1), True): (81_386, 282_634, 886_378, 2_656_034),
        ((32, 32, 3), True): (81_674, 282_922, 886_666, 2_656_610),
        ((28, 28, 1), False): (78_426, 273_754, 859_738, 2_270_218),
        ((32, 32, 3), False): (78_714, 274_042, 860_026, 2_270_794),
    }[input_shape, se]
    assert tuple(counts.values()) == documented
    assert 0.26e6 < counts["resnet20"] < 0.29e6
    assert 1.5e6 < counts["mobilenet_small"] < 5e6


MOBILENET_WIDTH_05 = dict(stem=16, channels=(8, 16, 16, 32, 48, 80, 160), head=640)


@pytest.mark.parametrize(
    ("builder", "width", "se", "expected"),
    [
        # Stage filters 16/32/64 times width, rounded to a multiple of 8 (at least 8).
        (resnet20, 0.5, True, resnet_params(3, 3, 7, (8, 16, 32))),
        (resnet20, 0.25, True, resnet_params(3, 3, 7, (8, 8, 16))),
        (resnet20, 0.25, False, resnet_params(3, 3, 7, (8, 8, 16), se=False)),
        (resnet56, 2.0, True, resnet_params(9, 3, 7, (32, 64, 128))),
        # 0.5 x (16, 24, 32, 64, 96, 160, 320): 24 x 0.5 = 12 rounds up to 16.
        (mobilenet_small, 0.5, True, mobilenet_params(3, 7, **MOBILENET_WIDTH_05)),
        (mobilenet_small, 0.5, False, mobilenet_params(3, 7, **MOBILENET_WIDTH_05, se=False)),
        (
            mobilenet_small,
            1.3,
            True,
            mobilenet_params(3, 7, stem=40, channels=(24, 32, 40, 80, 128, 208, 416), head=1664),
        ),
    ],
)
def test_parameter_counts_with_width(builder, width, se, expected):
    assert builder((32, 32, 3), 7, width=width, se=se).count_params() == expected


def test_channel_counts_are_multiples_of_8_at_any_width():
    model = mobilenet_small((32, 32, 3), 10, width=0.7)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert layer.filters % 8 == 0, layer.name


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    ("input_shape", "num_classes"), [((28, 28, 1), 10), ((32, 32, 3), 2), ((224, 224, 3), 5)]
)
def test_output_is_float32_logits_of_shape_batch_by_classes(name, input_shape, num_classes):
    model = build_model(name, input_shape, num_classes)
    images = np.random.default_rng(0).uniform(0, 1, (2, *input_shape)).astype("float32")
    logits = inference(model, images)
    assert logits.shape == (2, num_classes)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert model.layers[-1].name == "logits"
    assert model.layers[-1].get_config()["activation"] == "linear"


@pytest.mark.parametrize(
    ("name", "input_shape", "final_size"),
    [
        # ResNet stem: stride 1 when min(H, W) < 64, stride 2 otherwise; stages 1/2/2.
        ("resnet20", (28, 28, 1), (7, 7)),
        ("resnet20", (63, 100, 3), (16, 25)),
        ("resnet20", (64, 64, 3), (8, 8)),
        ("resnet56", (224, 224, 3), (28, 28)),
        # MobileNet: total stride 16 ("same" padding rounds up).
        ("mobilenet_small", (28, 28, 1), (2, 2)),
        ("mobilenet_small", (32, 32, 3), (2, 2)),
        ("mobilenet_small", (224, 224, 3), (14, 14)),
    ],
)
def test_final_feature_map_size(name, input_shape, final_size):
    model = build_model(name, input_shape, 10)
    assert tuple(model.get_layer("avg_pool").input.shape[1:3]) == final_size


@pytest.mark.parametrize("pooling", POOLING_TYPES)
def test_output_stays_float32_under_mixed_precision(pooling):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = resnet20((32, 32, 3), 10, width=0.25, drop_path_rate=0.1, pooling=pooling)
    finally:
        keras.config.set_dtype_policy(previous)
    for name in ("stage3_block3_conv2", "stage3_block3_se", "stage3_block3_drop_path"):
        assert model.get_layer(name).compute_dtype == "float16", name
    assert model.output.dtype == "float32"
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    assert np.all(np.isfinite(inference(model, images)))


@pytest.mark.parametrize(
    ("name", "adds"),
    [("resnet8", 3), ("resnet20", 9), ("resnet56", 27), ("mobilenet_small", 10)],
)
def test_structure_convs_residual_adds(name, adds):
    model = build_model(name, (32, 32, 3), 10)
    convs = [layer for layer in model.layers if _is_conv(layer)]
    assert convs
    for layer in convs:
        config = layer.get_config()
        initializer = config.get("kernel_initializer") or config["depthwise_initializer"]
        assert not config["use_bias"], layer.name
        assert initializer["class_name"] == "HeNormal", layer.name
        assert config.get("kernel_regularizer") is None, layer.name
        assert isinstance(_consumers(model)[layer.name][0], keras.layers.BatchNormalization)
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == adds


# --- downscale activations, by walking the functional graph --------------------------------------


def _is_conv(layer) -> bool:
    return isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D)


def _is_activation(layer) -> bool:
    return isinstance(layer, keras.layers.ReLU | keras.layers.LeakyReLU | keras.layers.Activation)


def _strided(layer) -> bool:
    return _is_conv(layer) and tuple(layer.strides) == (2, 2)


def _producers(layer) -> list:
    (node,) = layer._inbound_nodes
    return [tensor._keras_history.operation for tensor in node.input_tensors]


def _consumers(model) -> dict:
    consumers = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for producer in _producers(layer):
            consumers[producer.name].append(layer)
    return consumers


def _is_plain_relu(layer) -> bool:
    return (
        type(layer) is keras.layers.ReLU
        and layer.max_value is None
        and layer.negative_slope == 0
        and layer.threshold == 0
    )


def _is_kind(layer, kind: str) -> bool:
    if kind == "leaky_relu":
        return type(layer) is keras.layers.LeakyReLU and math.isclose(layer.negative_slope, 0.1)
    if kind == "swish":
        return type(layer) is keras.layers.Activation and layer.get_config()["activation"] in (
            "swish",
            "silu",
        )
    return _is_plain_relu(layer)


def _expected_downscale_names(name: str, input_shape: tuple) -> set:
    if name == "mobilenet_small":
        return {"stem_downscale_act"} | {f"stage{s}_block1_downscale_act" for s in (2, 3, 4)}
    stem = {"stem_downscale_act"} if min(input_shape[:2]) >= 64 else set()
    return stem | {"stage2_block1_downscale_act", "stage3_block1_downscale_act"}


@pytest.mark.parametrize("kind", DOWNSCALE_ACTIVATIONS)
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("input_shape", [(32, 32, 3), (64, 64, 2)])
def test_downscale_activation_follows_each_stride_2_layer(name, kind, input_shape):
    model = build_model(name, input_shape, 10, downscale_activation=kind)
    consumers = _consumers(model)

    after_stride_2 = []
    for layer in filter(_is_activation, model.layers):
        (producer,) = _producers(layer)
        if isinstance(producer, keras.layers.BatchNormalization):
            (source,) = _producers(producer)
            assert _is_conv(source), layer.name
        else:  # the ReLU after a residual add
            assert isinstance(producer, keras.layers.Add), layer.name
            source = producer
        if _strided(source):
            after_stride_2.append(layer.name)
            assert _is_kind(layer, kind), layer.name
            assert layer.name.endswith("_downscale_act"), layer.name
        else:
            assert _is_plain_relu(layer), layer.name
            assert "downscale" not in layer.name, layer.name

    for layer in filter(_strided, model.layers):
        (bn,) = consumers[layer.name]
        assert isinstance(bn, keras.layers.BatchNormalization), layer.name
        (follower,) = consumers[bn.name]
        if isinstance(follower, keras.layers.Add):  # a ResNet projection shortcut: no activation
            assert name.startswith("resnet") and layer.name.endswith("_shortcut_conv")
            assert layer.kernel_size == (1, 1)
        else:
            assert _is_kind(follower, kind), follower.name

    expected = _expected_downscale_names(name, input_shape)
    assert set(after_stride_2) == expected
    if kind == "relu":
        relus_after_stride_2 = [n for n in after_stride_2 if _is_plain_relu(model.get_layer(n))]
        assert len(relus_after_stride_2) == len(expected)
    else:
        assert sum(_is_kind(layer, kind) for layer in model.layers) == len(expected)


def test_block_names_are_stable():
    resnet = resnet20((32, 32, 3), 10)
    for layer_name in (
        "stem_conv",
        "stage2_block1_conv1",
        "stage2_block1_shortcut_conv",
        "stage3_block3_bn2",
        "stage3_block3_se",
        "stage3_block3_out_relu",
        "logits",
    ):
        resnet.get_layer(layer_name)
    mobilenet = mobilenet_small((32, 32, 3), 10)
    for layer_name in (
        "stage1_block1_dw_conv",
        "stage2_block2_expand_conv",
        "stage4_block1_downscale_act",
        "stage4_block1_se",
        "stage7_block1_project_bn",
        "head_conv",
    ):
        mobilenet.get_layer(layer_name)


# --- squeeze-excite, stochastic depth, attention pooling ---------------------------------------


def _blocks(name: str) -> list[tuple[str, bool]]:
    """(layer-name prefix, has a residual add) of every block, in order of depth."""
    if name == "mobilenet_small":
        # The first block of every MobileNetV2 stage changes the channels: no residual add.
        return [
            (f"stage{stage}_block{block}", block > 1)
            for stage, (_, _, blocks) in enumerate(MOBILENET_PLAN, start=1)
            for block in range(1, blocks + 1)
        ]
    per_stage = {"resnet8": 1, "resnet20": 3, "resnet56": 9}[name]
    return [
        (f"stage{stage}_block{block}", True)
        for stage in (1, 2, 3)
        for block in range(1, per_stage + 1)
    ]


def _copy_weights(source, target) -> None:
    """Copies the weights of every layer of `target` from the layer of the same name."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_squeeze_excite_sits_where_documented(name):
    model = build_model(name, (32, 32, 3), 10)
    consumers = _consumers(model)
    se_layers = [layer for layer in model.layers if isinstance(layer, SqueezeExcite)]
    assert sorted(layer.name for layer in se_layers) == sorted(
        f"{prefix}_se" for prefix, _ in _blocks(name)
    )
    for layer in se_layers:
        prefix = layer.name.removesuffix("_se")
        (producer,) = _producers(layer)
        (consumer,) = consumers[layer.name]
        channels = layer.input.shape[-1]
        if name.startswith("resnet"):  # SE-ResNet: after the last BN, before the add
            assert producer.name == f"{prefix}_bn2"
            assert consumer.name == f"{prefix}_add"
            assert layer.reduced == se_width(channels)
        else:  # MobileNetV3 / EfficientNet: between the depthwise activation and the projection
            assert producer.name in (f"{prefix}_dw_relu", f"{prefix}_downscale_act")
            assert consumer.name == f"{prefix}_project_conv"
            first = "dw_conv" if prefix == "stage1_block1" else "expand_conv"
            block_input = model.get_layer(f"{prefix}_{first}").input.shape[-1]
            assert layer.reduced == se_width(block_input), layer.name

    without = build_model(name, (32, 32, 3), 10, se=False)
    assert not any(isinstance(layer, SqueezeExcite) for layer in without.layers)
    assert not any(layer.name.endswith("_se") for layer in without.layers)


@pytest.mark.parametrize("se", [True, False])
@pytest.mark.parametrize(
    ("name", "width", "also_residual"),
    [
        ("resnet20", 0.25, ()),
        ("resnet56", 0.25, ()),
        ("mobilenet_small", 0.5, ()),
        # At width 0.25 the stem and stage1 both have 8 channels: stage1_block1 adds too.
        ("mobilenet_small", 0.25, ("stage1_block1",)),
    ],
)
def test_drop_path_rates_rise_linearly_with_depth(name, width, also_residual, se):
    model = build_model(name, (28, 28, 1), 10, width=width, se=se, drop_path_rate=0.3)
    blocks = _blocks(name)
    # Huang et al.: block l of L (every block counted) gets 0.3 * l / L; only residual blocks.
    expected = {
        f"{prefix}_drop_path": 0.3 * depth / len(blocks)
        for depth, (prefix, residual) in enumerate(blocks, start=1)
        if residual or prefix in also_residual
    }
    dropped = {layer.name: layer.rate for layer in model.layers if isinstance(layer, DropPath)}
    assert dropped == pytest.approx(expected)
    deepest = 0.3 if name.startswith("resnet") else 0.3 * 16 / 17  # mobilenet's last: no add
    assert max(dropped.values()) == pytest.approx(deepest)

    consumers = _consumers(model)
    for layer_name in dropped:
        prefix = layer_name.removesuffix("_drop_path")
        (producer,) = _producers(model.get_layer(layer_name))
        if name.startswith("resnet"):
            assert producer.name == (f"{prefix}_se" if se else f"{prefix}_bn2")
        else:
            assert producer.name == f"{prefix}_project_bn"
        assert [layer.name for layer in consumers[layer_name]] == [f"{prefix}_add"]
    # Every residual add merges exactly one dropped branch with an undropped shortcut.
    for add in (layer for layer in model.layers if isinstance(layer, keras.layers.Add)):
        kinds = [isinstance(producer, DropPath) for producer in _producers(add)]
        assert sorted(kinds) == [False, True], add.name


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_small"])
def test_drop_path_is_the_identity_at_inference_and_random_in_training(name):
    dropped = build_model(name, (28, 28, 1), 10, width=0.25, drop_path_rate=0.5)
    plain = build_model(name, (28, 28, 1), 10, width=0.25, drop_path_rate=0.0)
    assert not any(isinstance(layer, DropPath) for layer in plain.layers)
    _copy_weights(dropped, plain)
    images = np.random.default_rng(3).uniform(0, 1, (8, 28, 28, 1)).astype("float32")

    first = inference(dropped, images)
    np.testing.assert_array_equal(inference(dropped, images), first)
    np.testing.assert_array_equal(inference(plain, images), first)

    def training_output(model):  # batch-norm statistics are a function of the batch
        return keras.ops.convert_to_numpy(model(images, training=True))

    np.testing.assert_allclose(training_output(plain), training_output(plain), atol=1e-6)
    assert not np.allclose(training_output(dropped), training_output(dropped), atol=1e-3)


@pytest.mark.parametrize(
    ("name", "features", "run_eagerly"),
    [
        ("resnet8", "stage3_block1_out_relu", False),
        # Tracing mobilenet's training step takes ~15 s on a 2-core CPU; resnet8 covers it.
        ("mobilenet_small", "head_relu", True),
    ],
)
def test_attention_pooling_replaces_average_pooling_and_trains(name, features, run_eagerly):
    model = build_model(name, (28, 28, 1), 10, width=0.25, pooling="attention")
    names = [layer.name for layer in model.layers]
    assert "attention_pool" in names and "avg_pool" not in names
    pool = model.get_layer("attention_pool")
    assert isinstance(pool, AttentionPooling)
    assert [layer.name for layer in _producers(pool)] == [features]
    assert [layer.name for layer in _consumers(model)["attention_pool"]] == ["logits"]
    assert model.output_shape == (None, 10)

    # Its query starts at zero: the model starts as the average-pooling one with its weights.
    average = build_model(name, (28, 28, 1), 10, width=0.25, pooling="avg")
    _copy_weights(model, average)
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 1, (8, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(inference(model, images), inference(average, images), atol=1e-5)

    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,  # an XLA compile would take longer than the step
        run_eagerly=run_eagerly,
    )
    history = model.fit(images, rng.integers(0, 10, 8), batch_size=8, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][-1])
    assert np.any(keras.ops.convert_to_numpy(pool.query) != 0)  # the gradient reaches it


def test_docstring_examples():
    for module in (models, common, resnet, mobilenet):
        assert doctest.testmod(module).failed == 0, module.__name__


# --- argument errors -------------------------------------------------------------------------


def test_unknown_name_lists_model_names():
    with pytest.raises(ValueError, match="name") as error:
        build_model("resnet18", (32, 32, 3), 10)
    message = str(error.value)
    assert "'resnet18'" in message
    assert all(name in message for name in MODEL_NAMES)


@pytest.mark.parametrize(
    ("kwargs", "argument", "shown"),
    [
        ({"width": 0}, "width", ["got 0", "> 0"]),
        ({"width": -0.5}, "width", ["-0.5"]),
        ({"width": float("nan")}, "width", ["nan"]),
        ({"width": "1"}, "width", ["'1'"]),
        ({"input_shape": (27, 32, 3)}, "input_shape", ["(27, 32, 3)", "28"]),
        ({"input_shape": (32, 20, 1)}, "input_shape", ["(32, 20, 1)", "28"]),
        ({"input_shape": (32, 32)}, "input_shape", ["(32, 32)"]),
        ({"input_shape": (32, 32, 0)}, "input_shape", ["(32, 32, 0)"]),
        ({"input_shape": (None, None, 3)}, "input_shape", ["None"]),
        ({"input_shape": 32}, "input_shape", ["got 32"]),
        ({"num_classes": 1}, "num_classes", ["got 1", ">= 2"]),
        (
            {"downscale_activation": "gelu"},
            "downscale_activation",
            ["'gelu'", *DOWNSCALE_ACTIVATIONS],
        ),
        ({"se": "yes"}, "se", ["'yes'", "True", "False"]),
        ({"se": 1}, "se", ["got 1"]),
        ({"drop_path_rate": 1.0}, "drop_path_rate", ["got 1.0", "[0, 1)"]),
        ({"drop_path_rate": -0.1}, "drop_path_rate", ["-0.1"]),
        ({"drop_path_rate": "0.1"}, "drop_path_rate", ["'0.1'"]),
        ({"pooling": "max"}, "pooling", ["'max'", *POOLING_TYPES]),
        ({"pooling": None}, "pooling", ["None"]),
    ],
)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_arguments_raise_value_error_naming_them(name, kwargs, argument, shown):
    arguments = {"input_shape": (32, 32, 3), "num_classes": 10, **kwargs}
    input_shape = arguments.pop("input_shape")
    num_classes = arguments.pop("num_classes")
    with pytest.raises(ValueError, match=argument) as error:
        build_model(name, input_shape, num_classes, **arguments)
    assert str(error.value).startswith(f"{argument} ")
    for text in shown:
        assert text in str(error.value)


# --- saving ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "input_shape", "kind"),
    [
        ("resnet20", (32, 32, 3), "leaky_relu"),
        ("resnet56", (64, 64, 1), "swish"),
        ("mobilenet_small", (28, 28, 1), "relu"),
    ],
)
def test_keras_file_round_trip_gives_identical_predictions(tmp_path, name, input_shape, kind):
    model = build_model(name, input_shape, 10, width=0.5, downscale_activation=kind)
    rng = np.random.default_rng(1)
    _randomize(model, rng)
    images = rng.uniform(0, 1, (3, *input_shape)).astype("float32")
    expected = inference(model, images)

    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)

    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(inference(reloaded, images), expected)


def _randomize(model, rng) -> None:
    """Non-trivial batch-norm statistics, biases and attention queries: every weight matters."""
    for weight in model.weights:
        if weight.path.endswith(("moving_variance", "gamma")):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
        elif weight.path.endswith(("moving_mean", "beta", "bias", "query")):
            weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))


RELOAD_SCRIPT = """
import sys
import keras, numpy as np
import tfmagic
images = np.load(sys.argv[1])
for path in sys.argv[2:]:
    model = keras.saving.load_model(path, safe_mode=True)
    np.save(path + ".npy", keras.ops.convert_to_numpy(model(images, training=False)))
"""


def test_all_options_reload_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (3, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = {}
    for name in ("resnet8", "mobilenet_small"):
        model = build_model(
            name, (32, 32, 3), 10, width=0.25, se=True, drop_path_rate=0.2, pooling="attention"
        )
        _randomize(model, rng)
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        expected[path] = inference(model, images)

        def tricks(model):
            kinds = (SqueezeExcite, DropPath, AttentionPooling)
            return [layer.get_config() for layer in model.layers if isinstance(layer, kinds)]

        assert tricks(keras.saving.load_model(path, safe_mode=True)) == tricks(model)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(tmp_path / "images.npy"), *expected],
        check=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    for path, predictions in expected.items():
        np.testing.assert_array_equal(np.load(f"{path}.npy"), predictions)
