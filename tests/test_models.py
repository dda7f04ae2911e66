"""Tests for tfmagic.models: parameter counts, shapes, downscale activations, errors, saving."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from tfmagic.models import (
    DOWNSCALE_ACTIVATIONS,
    MODEL_NAMES,
    build_model,
    mobilenet_small,
    resnet20,
    resnet56,
)

# Parameter counts computed by hand from the architecture specification. Batch norm holds four
# vectors per channel (gamma, beta, moving mean, moving variance); model.count_params() counts
# all of them.


def conv_params(kernel: int, in_channels: int, out_channels: int) -> int:
    return kernel * kernel * in_channels * out_channels


def bn_params(channels: int) -> int:
    return 4 * channels


def dense_params(in_features: int, num_classes: int) -> int:
    return in_features * num_classes + num_classes


def resnet_params(blocks: int, in_channels: int, num_classes: int, filters: tuple) -> int:
    total = conv_params(3, in_channels, filters[0]) + bn_params(filters[0])
    previous = filters[0]
    for stage, stage_filters in enumerate(filters):
        for block in range(blocks):
            total += conv_params(3, previous, stage_filters) + bn_params(stage_filters)
            total += conv_params(3, stage_filters, stage_filters) + bn_params(stage_filters)
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
    in_channels: int, num_classes: int, stem: int, channels: tuple, head: int
) -> int:
    total = conv_params(3, in_channels, stem) + bn_params(stem)
    previous = stem
    for (expansion, _, blocks), out_channels in zip(MOBILENET_PLAN, channels, strict=True):
        for _ in range(blocks):
            hidden = previous * expansion
            if expansion != 1:
                total += conv_params(1, previous, hidden) + bn_params(hidden)
            total += 9 * hidden + bn_params(hidden)
            total += conv_params(1, hidden, out_channels) + bn_params(out_channels)
            previous = out_channels
    total += conv_params(1, previous, head) + bn_params(head)
    return total + dense_params(head, num_classes)


MOBILENET_WIDTH_1 = dict(stem=32, channels=tuple(c for _, c, _ in MOBILENET_PLAN), head=1280)


@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_parameter_counts_at_width_1_match_formulas(input_shape):
    channels = input_shape[-1]
    counts = {
        "resnet20": resnet_params(3, channels, 10, (16, 32, 64)),
        "resnet56": resnet_params(9, channels, 10, (16, 32, 64)),
        "mobilenet_small": mobilenet_params(channels, 10, **MOBILENET_WIDTH_1),
    }
    for name, expected in counts.items():
        assert build_model(name, input_shape, 10).count_params() == expected, name
    # The numbers written in the docstrings.
    documented = {
        (28, 28, 1): (273_754, 859_738, 2_270_218),
        (32, 32, 3): (274_042, 860_026, 2_270_794),
    }[input_shape]
    assert tuple(counts.values()) == documented
    assert 0.26e6 < counts["resnet20"] < 0.28e6
    assert 1.5e6 < counts["mobilenet_small"] < 5e6


@pytest.mark.parametrize(
    ("builder", "width", "expected"),
    [
        # Stage filters 16/32/64 times width, rounded to a multiple of 8 (at least 8).
        (resnet20, 0.5, resnet_params(3, 3, 7, (8, 16, 32))),
        (resnet20, 0.25, resnet_params(3, 3, 7, (8, 8, 16))),
        (resnet56, 2.0, resnet_params(9, 3, 7, (32, 64, 128))),
        # 0.5 x (16, 24, 32, 64, 96, 160, 320): 24 x 0.5 = 12 rounds up to 16.
        (
            mobilenet_small,
            0.5,
            mobilenet_params(3, 7, stem=16, channels=(8, 16, 16, 32, 48, 80, 160), head=640),
        ),
        (
            mobilenet_small,
            1.3,
            mobilenet_params(3, 7, stem=40, channels=(24, 32, 40, 80, 128, 208, 416), head=1664),
        ),
    ],
)
def test_parameter_counts_with_width(builder, width, expected):
    assert builder((32, 32, 3), 7, width=width).count_params() == expected


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
    logits = keras.ops.convert_to_numpy(model(images, training=False))
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


def test_output_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = resnet20((32, 32, 3), 10)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("stage3_block3_conv2").compute_dtype == "float16"
    assert model.output.dtype == "float32"


@pytest.mark.parametrize(
    ("name", "adds"), [("resnet20", 9), ("resnet56", 27), ("mobilenet_small", 10)]
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
        "stage3_block3_out_relu",
        "logits",
    ):
        resnet.get_layer(layer_name)
    mobilenet = mobilenet_small((32, 32, 3), 10)
    for layer_name in (
        "stage1_block1_dw_conv",
        "stage2_block2_expand_conv",
        "stage4_block1_downscale_act",
        "stage7_block1_project_bn",
        "head_conv",
    ):
        mobilenet.get_layer(layer_name)


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
    ],
)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_arguments_raise_value_error_naming_them(name, kwargs, argument, shown):
    arguments = {"input_shape": (32, 32, 3), "num_classes": 10, **kwargs}
    input_shape = arguments.pop("input_shape")
    num_classes = arguments.pop("num_classes")
    with pytest.raises(ValueError, match=argument) as error:
        build_model(name, input_shape, num_classes, **arguments)
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
    # Non-trivial batch-norm statistics and biases, so that every weight matters.
    for weight in model.weights:
        if weight.path.endswith("moving_variance") or weight.path.endswith("gamma"):
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
        elif weight.path.endswith(("moving_mean", "beta", "bias")):
            weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))
    images = rng.uniform(0, 1, (3, *input_shape)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images, training=False))

    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)

    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(reloaded(images, training=False)), expected
    )
