"""Tests for tfmagic.models.surgery on keras.applications models and tfmagic's own backbones.

Each keras.applications model is built once per module (64x64 inputs, ``weights=None``); the
expected counts and places are taken independently of the code under test: from the layer
names keras.applications gives, and from counting ``Add``, ``DepthwiseConv2D`` and
``Multiply`` layers.
"""

import collections
import dataclasses
import doctest
import json

import keras
import numpy as np
import pytest
from outputs import inference

from tfmagic.layers import SqueezeExcite
from tfmagic.models import build_model, surgery
from tfmagic.models.surgery import add_squeeze_excite, set_downscaling_activation

INPUT_SHAPE = (64, 64, 3)
APPLICATIONS = {
    "resnet50": keras.applications.ResNet50,
    "mobilenetv2": keras.applications.MobileNetV2,
    "efficientnetb0": keras.applications.EfficientNetB0,
}
# The activation after each stride-2 convolution (directly or after its batch norm), by the
# layer names of keras.applications; the stride-2 shortcut convolutions of ResNet50 go to an Add.
DOWNSCALE_ACTIVATIONS = {
    "resnet50": {"conv1_relu", "conv3_block1_1_relu", "conv4_block1_1_relu", "conv5_block1_1_relu"},
    "mobilenetv2": {
        "Conv1_relu",
        "block_1_depthwise_relu",
        "block_3_depthwise_relu",
        "block_6_depthwise_relu",
        "block_13_depthwise_relu",
    },
    "efficientnetb0": {
        "stem_activation",
        "block2a_activation",
        "block3a_activation",
        "block4a_activation",
        "block6a_activation",
    },
}
ACTIVATION_TYPES = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.Activation)
# The models are built once per module: its tests share one test process.
pytestmark = pytest.mark.xdist_group("surgery")


@dataclasses.dataclass
class Case:
    name: str
    model: keras.Model
    downscaled: keras.Model
    downscale_report: surgery.SurgeryReport
    excited: keras.Model
    se_report: surgery.SurgeryReport


@pytest.fixture(scope="module", params=sorted(APPLICATIONS))
def case(request):
    model = APPLICATIONS[request.param](weights=None, input_shape=INPUT_SHAPE, classes=10)
    downscaled, downscale_report = set_downscaling_activation(model)
    excited, se_report = add_squeeze_excite(model)
    return Case(request.param, model, downscaled, downscale_report, excited, se_report)


def _producers(model):
    """{id(output tensor): layer} over the model's layers (each called once)."""
    return {id(layer.output): layer for layer in model.layers}


def _consumers(model):
    """{id(tensor): [layers taking it]} over the model's non-input layers."""
    consumers = collections.defaultdict(list)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            for tensor in keras.tree.flatten(layer.input):
                consumers[id(tensor)].append(layer)
    return consumers


def _activation_types(model):
    return {
        layer.name: type(layer).__name__
        for layer in model.layers
        if isinstance(layer, ACTIVATION_TYPES)
    }


def _assert_same_weights(original, new, skip=()):
    for layer in original.layers:
        if layer.name in skip:
            continue
        old_weights = layer.get_weights()
        new_weights = new.get_layer(layer.name).get_weights()
        assert len(old_weights) == len(new_weights), layer.name
        for old, fresh in zip(old_weights, new_weights, strict=True):
            np.testing.assert_array_equal(old, fresh, err_msg=layer.name)


def test_downscale_activation_replaces_exactly_the_activations_after_stride2(case):
    expected = DOWNSCALE_ACTIVATIONS[case.name]
    before, after = _activation_types(case.model), _activation_types(case.downscaled)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == expected
    assert {after[name] for name in expected} == {"LeakyReLU"}
    counts_before, counts_after = (
        collections.Counter(before.values()),
        collections.Counter(after.values()),
    )
    assert counts_after["LeakyReLU"] == counts_before["LeakyReLU"] + len(expected)
    assert sum(counts_after.values()) == sum(counts_before.values())
    assert set(case.downscale_report.changed) == expected
    assert case.downscale_report.count == len(expected)

    skipped = {skip.layer: skip.reason for skip in case.downscale_report.skipped}
    if case.name == "resnet50":  # the stride-2 1x1 shortcut convs: conv, BN, Add
        assert skipped.keys() == {f"conv{stage}_block1_0_conv" for stage in (3, 4, 5)}
        assert all("(Add): no activation follows" in reason for reason in skipped.values())
    else:
        assert not skipped

    producers = _producers(case.downscaled)
    for name in expected:
        layer = case.downscaled.get_layer(name)
        assert layer.negative_slope == pytest.approx(0.1)
        norm = producers[id(layer.input)]
        assert isinstance(norm, keras.layers.BatchNormalization)
        conv = producers[id(norm.input)]
        assert isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
        assert tuple(conv.strides) == (2, 2)


def test_squeeze_excite_one_per_block(case):
    se_layers = [layer for layer in case.excited.layers if isinstance(layer, SqueezeExcite)]
    types = collections.Counter(type(layer).__name__ for layer in case.model.layers)
    if case.name == "resnet50":  # every bottleneck ends in an Add
        blocks = types["Add"]
    elif case.name == "mobilenetv2":  # one depthwise conv per inverted-residual block
        blocks = types["DepthwiseConv2D"]
    else:  # EfficientNet: every MBConv block already has its SE (one Multiply each)
        blocks = 0
        assert len(case.se_report.skipped) == types["Multiply"] == types["DepthwiseConv2D"] == 16
    assert len(se_layers) == case.se_report.count == blocks
    assert {layer.name for layer in se_layers} == set(case.se_report.changed)

    producers, consumers = _producers(case.excited), _consumers(case.excited)
    for layer in se_layers:
        assert isinstance(producers[id(layer.input)], keras.layers.BatchNormalization)
        following = {type(c).__name__ for c in consumers[id(layer.output)]}
        assert following <= {"Add", "Conv2D"}
        if case.name == "resnet50":
            assert following == {"Add"} and layer.name.endswith("_3_bn_se")
        if case.name == "mobilenetv2":
            assert layer.name.endswith("project_BN_se")
    if case.name == "mobilenetv2":  # 10 residual blocks, 7 without a residual add
        residual = [
            c for c in se_layers if {"Add"} == {type(x).__name__ for x in consumers[id(c.output)]}
        ]
        assert (len(residual), len(se_layers) - len(residual)) == (types["Add"], 7)


def test_unchanged_weights_are_carried_over(case):
    _assert_same_weights(case.model, case.downscaled)
    _assert_same_weights(case.model, case.excited)


def test_rewritten_model_trains_and_original_is_untouched(case):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *INPUT_SHAPE)).astype("float32")
    y = np.array([1, 7])
    original_weights = [w.copy() for w in case.model.get_weights()]
    original_prediction = inference(case.model, x)

    new_model, _ = add_squeeze_excite(case.downscaled)
    # One eager step: tracing the train step of a full keras.applications model would cost
    # more than the step; what is checked is that gradients reach every rewritten weight path.
    new_model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    start = [w.copy() for w in new_model.get_weights()]
    history = new_model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(
        not np.array_equal(a, b) for a, b in zip(start, new_model.get_weights(), strict=True)
    )
    prediction = inference(new_model, x)
    assert prediction.shape == (2, 10) and np.isfinite(prediction).all()

    for old, now in zip(original_weights, case.model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, now)
    np.testing.assert_array_equal(original_prediction, inference(case.model, x))
    assert not any(isinstance(layer, SqueezeExcite) for layer in case.model.layers)


def test_resnet20_relu_to_swish_equals_building_with_swish():
    relu = build_model("resnet20", (32, 32, 3), 10, downscale_activation="relu")
    swish = build_model("resnet20", (32, 32, 3), 10, downscale_activation="swish")
    rewritten, report = set_downscaling_activation(relu, "swish")

    def swish_layers(model):
        return [
            layer.name
            for layer in model.layers
            if isinstance(layer, keras.layers.Activation)
            and layer.get_config()["activation"] in ("swish", "silu")
        ]

    assert swish_layers(rewritten) == swish_layers(swish) == list(report.changed)
    assert len(report.changed) == 2

    def graph(model):  # the layer configs and connections, input layer name left out
        return json.dumps(model.get_config()["layers"][1:]).replace(model.layers[0].name, "input")

    assert graph(rewritten) == graph(swish)
    _assert_same_weights(relu, rewritten)


def test_already_requested_activation_is_left_alone():
    model = build_model("resnet20", (32, 32, 3), 10)  # leaky_relu after the stride-2 convs
    _, report = set_downscaling_activation(model, "leaky_relu")
    assert report.count == 0
    assert sorted(skip.layer for skip in report.skipped) == [
        "stage2_block1_downscale_act",
        "stage2_block1_shortcut_conv",
        "stage3_block1_downscale_act",
        "stage3_block1_shortcut_conv",
    ]


def _fused_model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="down")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="same")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x), name="fused")


def test_fused_activation_is_split_off_with_the_weights():
    model = _fused_model()
    x = np.random.default_rng(1).normal(size=(3, 16, 16, 3)).astype("float32")

    _, report = set_downscaling_activation(model, "relu")
    assert report.count == 0 and "already" in report.skipped[0].reason

    leaky, report = set_downscaling_activation(model, "leaky_relu")
    assert report.changed == ("down", "down_downscale_act")
    assert report.changes[0].action == "split"
    assert leaky.get_layer("down").get_config()["activation"] == "linear"
    assert leaky.get_layer("same").get_config()["activation"] == "relu"
    assert isinstance(leaky.get_layer("down_downscale_act"), keras.layers.LeakyReLU)
    _assert_same_weights(model, leaky)
    assert model.get_layer("down").get_config()["activation"] == "relu"

    # After the split the conv outputs the pre-activation of the fused conv: the original's
    # output is swish of it, the new model's output ReLU of it.
    inputs = keras.Input((16, 16, 3))
    hidden = keras.layers.Conv2D(8, 3, strides=2, activation="swish", name="down")(inputs)
    swish_model = keras.Model(inputs, hidden)
    relu_model, report = set_downscaling_activation(swish_model, "relu")
    assert report.count == 1
    conv = keras.ops.convert_to_numpy(
        keras.Model(relu_model.input, relu_model.get_layer("down").output)(x)
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(relu_model(x)), np.maximum(conv, 0), rtol=1e-6
    )
    expected = keras.ops.convert_to_numpy(swish_model(x))
    np.testing.assert_allclose(conv * (1 / (1 + np.exp(-conv))), expected, rtol=1e-5, atol=1e-6)


def _small_sequential():
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="relu"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(4, name="logits"),
        ],
        name="small",
    )


def test_sequential_model_is_rewritten_as_functional():
    model = _small_sequential()
    x = np.ones((2, 16, 16, 3), "float32")
    downscaled, report = set_downscaling_activation(model)
    assert report.changed == ("relu",)
    assert isinstance(downscaled.get_layer("relu"), keras.layers.LeakyReLU)
    excited, report = add_squeeze_excite(model, blocks=["bn"], ratio=0.5, min_channels=2)
    assert report.changed == ("bn_se",)
    assert excited.get_layer("bn_se").reduced == 4
    _assert_same_weights(model, excited)
    assert excited(x).shape == (2, 4)
    assert isinstance(model.get_layer("relu"), keras.layers.ReLU)


def test_nested_models_are_rewritten_with_paths():
    backbone = _small_sequential()
    inputs = keras.Input((16, 16, 3))
    outer = keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)), name="outer")
    downscaled, report = set_downscaling_activation(outer, "swish")
    assert report.changed == ("small/relu",)
    inner = downscaled.get_layer("small")
    assert inner.get_layer("relu").get_config()["activation"] == "silu"
    _assert_same_weights(backbone, inner)
    excited, report = add_squeeze_excite(outer, blocks=["small/bn"])
    assert report.changed == ("small/bn_se",)
    assert isinstance(excited.get_layer("small").get_layer("bn_se"), SqueezeExcite)
    assert excited(np.ones((1, 16, 16, 3), "float32")).shape == (1, 3)


def test_explicit_blocks_and_saved_model_round_trip(tmp_path):
    model = build_model("resnet20", (32, 32, 3), 10, se=False)
    model.compile(optimizer="adam", loss="mse")
    names = ["stem_relu", "stage3_block3_out_relu"]
    excited, report = add_squeeze_excite(model, blocks=names, name_suffix="_gate")
    assert report.changed == ("stem_relu_gate", "stage3_block3_out_relu_gate")
    assert excited.compiled
    auto, auto_report = add_squeeze_excite(model)
    assert auto_report.count == 9  # the 9 basic blocks of resnet20
    assert all(name.endswith("_bn2_se") for name in auto_report.changed)
    _, again_report = add_squeeze_excite(auto)
    assert again_report.count == 0 and len(again_report.skipped) == 9

    path = tmp_path / "excited.keras"
    excited.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(excited(x)), atol=1e-6
    )


def test_report_prints_one_line_per_change():
    model = build_model("resnet20", (32, 32, 3), 10, downscale_activation="relu")
    _, report = set_downscaling_activation(model, "swish")
    lines = str(report).splitlines()
    assert lines[0] == "set_downscaling_activation on 'resnet20': 2 changed, 2 skipped"
    assert lines[1].startswith("  replaced stage2_block1_downscale_act: ReLU() -> Activation(")
    assert len(lines) == 1 + report.count + len(report.skipped)


def test_mixed_precision_policy_is_kept():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _small_sequential()
    finally:
        keras.config.set_dtype_policy("float32")
    downscaled, _ = set_downscaling_activation(model)
    excited, _ = add_squeeze_excite(downscaled, blocks=["bn"])
    assert excited.get_layer("relu").dtype_policy.name == "mixed_float16"
    assert excited.get_layer("bn_se").dtype_policy.name == "mixed_float16"
    assert excited.get_layer("conv").dtype_policy.name == "mixed_float16"


def test_shared_activation_and_lambda_layers():
    inputs = keras.Input((16, 16, 3))
    relu = keras.layers.ReLU(name="shared_relu")
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    x = relu(keras.layers.Conv2D(4, 3, strides=2, name="down")(x))
    x = relu(keras.layers.Conv2D(4, 3, name="same")(x))
    model = keras.Model(inputs, x)
    rewritten, report = set_downscaling_activation(model)
    assert report.count == 0
    assert "called at several places" in report.skipped[0].reason
    sample = np.random.default_rng(3).normal(size=(1, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(rewritten(sample)), keras.ops.convert_to_numpy(model(sample))
    )


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


@pytest.mark.parametrize("function", [set_downscaling_activation, add_squeeze_excite])
def test_subclassed_model_is_refused(function):
    model = _Subclassed()
    model(np.ones((1, 3), "float32"))
    with pytest.raises(TypeError, match="functional or Sequential"):
        function(model)
    with pytest.raises(TypeError, match="functional or Sequential"):
        function(keras.layers.Dense(2))


def test_unbuilt_sequential_is_refused():
    with pytest.raises(ValueError, match="not built"):
        set_downscaling_activation(keras.Sequential([keras.layers.Dense(2)]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 0}, "ratio=0"),
        ({"ratio": 1.5}, "ratio=1.5"),
        ({"min_channels": 0}, "min_channels=0"),
        ({"min_channels": 2.0}, "min_channels=2.0"),
        ({"blocks": "all"}, "blocks='all'"),
        ({"blocks": []}, "blocks=\\[\\]"),
        ({"blocks": ["bn", "bn"]}, "must not repeat"),
        ({"blocks": ["bnx"]}, "blocks='bnx'.*close: bn"),
        ({"blocks": ["logits"]}, "blocks='logits'.*rank >= 3"),
        ({"name_suffix": ""}, "name_suffix=''"),
    ],
)
def test_bad_squeeze_excite_arguments(kwargs, match):
    model = _small_sequential()
    with pytest.raises(ValueError, match=match):
        add_squeeze_excite(model, **kwargs)


def test_taken_se_name_and_bad_activation_are_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 1, name="a")(inputs)
    x = keras.layers.Conv2D(4, 1, name="a_se")(x)
    with pytest.raises(ValueError, match="name_suffix='_se'.*'a_se'"):
        add_squeeze_excite(keras.Model(inputs, x), blocks=["a"])
    model = _small_sequential()
    for activation in ("gelu", None, "LeakyReLU"):
        with pytest.raises(ValueError, match="activation="):
            set_downscaling_activation(model, activation)


def test_docstring_examples():
    assert doctest.testmod(surgery).failed == 0
