"""keras.applications backbones by name: head, surgery options, pretrained weights, errors."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from outputs import inference

from tfmagic.layers import AttentionPooling, SqueezeExcite
from tfmagic.models import (
    build_application,
    build_model,
    min_input_size,
    preprocess_function,
)

SHAPE = (32, 32, 3)


def _images(count=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (count, *SHAPE)).astype("float32")


def _count(model, kind):
    return sum(isinstance(layer, kind) for layer in model.layers)


def test_untouched_application_gets_only_a_new_head():
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=SHAPE)
    model = build_application("keras:MobileNetV2", SHAPE, 7, se=False,
                              downscale_activation="keep")
    assert model.name == "mobilenetv2"
    assert model.output_shape == (None, 7)
    assert [layer.name for layer in model.layers[1:]] == [
        *(layer.name for layer in reference.layers[1:]), "avg_pool", "logits"]
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    assert model.count_params() == reference.count_params() + 1280 * 7 + 7


def test_surgery_options_are_applied_to_the_application():
    model = build_application("keras:MobileNetV2", SHAPE, 10, pooling="attention")
    assert _count(model, SqueezeExcite) == 17
    assert _count(model, keras.layers.LeakyReLU) == 5
    assert _count(model, AttentionPooling) == 1
    assert "avg_pool" not in [layer.name for layer in model.layers]
    assert np.all(np.isfinite(inference(model, _images())))

    efficientnet = build_application("keras:EfficientNetB0", SHAPE, 10)
    assert _count(efficientnet, SqueezeExcite) == 0


def test_pretrained_weights_file_gives_identical_features(tmp_path):
    keras.utils.set_random_seed(11)
    reference = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=SHAPE)
    path = str(tmp_path / "backbone.weights.h5")
    reference.save_weights(path)
    images = _images(seed=1)
    expected = inference(reference, images)

    keras.utils.set_random_seed(12)
    model = build_application("keras:MobileNetV2", SHAPE, 10, pretrained=path, se=False,
                              downscale_activation="keep")
    features = keras.Model(model.input, model.get_layer("out_relu").output)
    np.testing.assert_array_equal(inference(features, images), expected)

    keras.utils.set_random_seed(12)
    untrained = build_application("keras:MobileNetV2", SHAPE, 10, se=False,
                                  downscale_activation="keep")
    untrained_features = keras.Model(untrained.input, untrained.get_layer("out_relu").output)
    assert not np.array_equal(inference(untrained_features, images), expected)
    early = "block_2_project_BN"
    loaded_early = keras.Model(model.input, model.get_layer(early).output)
    reference_early = keras.Model(reference.input, reference.get_layer(early).output)
    untrained_early = keras.Model(untrained.input, untrained.get_layer(early).output)
    reference_values = inference(reference_early, images)
    np.testing.assert_array_equal(inference(loaded_early, images), reference_values)
    untrained_values = inference(untrained_early, images)
    assert np.abs(untrained_values - reference_values).max() > 0.3 * np.abs(reference_values).max()

    changed = build_application("keras:MobileNetV2", SHAPE, 10, pretrained=path)
    for layer in reference.layers:
        if layer.weights and changed.get_layer(layer.name).weights:
            for ours, theirs in zip(changed.get_layer(layer.name).get_weights(),
                                    layer.get_weights(), strict=True):
                np.testing.assert_array_equal(ours, theirs)


OFFLINE_SCRIPT = """
import sys
from tfmagic.models import PretrainedWeightsError, build_application
try:
    build_application("keras:MobileNetV2", (32, 32, 3), 10, pretrained="imagenet")
except PretrainedWeightsError as error:
    print(error)
    sys.exit(7)
"""


def test_imagenet_without_internet_says_so(tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 7, done.stderr[-2000:]
    assert "internet" in done.stdout
    assert "pretrained=PATH" in done.stdout


def test_build_model_dispatches_keras_names():
    model = build_model("keras:ResNet50", SHAPE, 3, se=False, downscale_activation="keep",
                        pooling="avg")
    assert model.name == "resnet50"
    assert model.output_shape == (None, 3)


def test_input_adaptation_facts():
    assert min_input_size("keras:InceptionV3") == 75
    assert min_input_size("keras:Xception") == 71
    assert min_input_size("keras:MobileNetV2") == 32
    pixels = np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")
    scaled = preprocess_function("keras:MobileNetV2")(pixels.copy())
    np.testing.assert_allclose(scaled, [[[[-1, 0, 1]]]])
    caffe = preprocess_function("keras:ResNet50")(pixels.copy())
    np.testing.assert_allclose(caffe, [[[[255 - 103.939, 127.5 - 116.779, 0 - 123.68]]]],
                               rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"model_name": "keras:NoSuchNet"}, "model"),
        ({"model_name": "MobileNetV2"}, "model"),
        ({"input_shape": (32, 32, 1)}, "input_shape"),
        ({"input_shape": (28, 28, 3)}, "input_shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"pretrained": "/no/such/file.weights.h5"}, "pretrained"),
        ({"se": "yes"}, "se"),
        ({"downscale_activation": "gelu"}, "downscale_activation"),
        ({"pooling": "max"}, "pooling"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    arguments = {"model_name": "keras:MobileNetV2", "input_shape": SHAPE, "num_classes": 10,
                 **kwargs}
    with pytest.raises(ValueError, match=f"^{name}="):
        build_application(**arguments)
