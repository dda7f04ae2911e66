"""Model layers: values against numpy, statistics of DropPath, attention pooling invariances,
the auxiliary head in training and out of the export, reload in a fresh process, mixed
precision and argument checks."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmagic.layers import (
    AttentionPooling,
    AuxiliaryHead,
    DropPath,
    SqueezeExcite,
    auxiliary_loss_weights,
    strip_auxiliary,
    with_auxiliary_head,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sparse_ce_from_logits(labels, logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


def small_model(num_classes=5):
    """A functional model with every custom layer but the auxiliary head."""
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                                   name="features")(inputs)
    branch = SqueezeExcite(min_channels=4, name="se")(features)
    merged = keras.layers.Add()([features, DropPath(0.2, seed=1, name="drop_path")(branch)])
    pooled = AttentionPooling(num_heads=2, seed=2, name="attention_pool")(merged)
    logits = keras.layers.Dense(num_classes, name="logits")(pooled)
    return keras.Model(inputs, logits, name="small")


# ----------------------------------------------------------------------------- SqueezeExcite

@pytest.mark.parametrize(("activation", "gate"), [("relu", "sigmoid"), ("swish", "sigmoid"),
                                                  ("relu", "hard_sigmoid")])
@pytest.mark.parametrize("shape", [(3, 5, 4, 12), (3, 7, 12)])
def test_squeeze_excite_matches_numpy(activation, gate, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    layer = SqueezeExcite(ratio=0.5, min_channels=4, activation=activation, gate=gate)
    layer.build(shape)
    assert layer.reduced == 6
    w1, b1 = rng.normal(size=(12, 6)), rng.normal(size=6)
    w2, b2 = rng.normal(size=(6, 12)), rng.normal(size=12)
    for variable, value in zip((layer.reduce_kernel, layer.reduce_bias, layer.expand_kernel,
                                layer.expand_bias), (w1, b1, w2, b2), strict=True):
        variable.assign(value.astype(np.float32))
    out = keras.ops.convert_to_numpy(layer(x))

    z = x.astype(np.float64).mean(axis=tuple(range(1, x.ndim - 1))) @ w1 + b1
    hidden = np.maximum(z, 0) if activation == "relu" else z * sigmoid(z)
    z = hidden @ w2 + b2
    g = sigmoid(z) if gate == "sigmoid" else np.clip(z / 6 + 0.5, 0, 1)
    if gate == "sigmoid":
        assert np.all((g > 0) & (g < 1))
    else:
        assert np.all((g >= 0) & (g <= 1))
    g = g.reshape(shape[0], *(1,) * (x.ndim - 2), 12)
    np.testing.assert_allclose(out, x * g, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("channels", "ratio", "min_channels", "reduced"), [
    (16, 0.25, 8, 8), (64, 0.25, 8, 16), (10, 0.25, 1, 2), (96, 1 / 24, 1, 4), (32, 1.0, 8, 32),
])
def test_squeeze_excite_parameter_count(channels, ratio, min_channels, reduced):
    layer = SqueezeExcite(ratio=ratio, min_channels=min_channels)
    layer.build((None, 4, 4, channels))
    assert layer.reduced == reduced
    assert layer.count_params() == 2 * channels * reduced + reduced + channels


# ---------------------------------------------------------------------------------- DropPath

def test_drop_path_identity_at_inference():
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 3)).astype(np.float32)
    layer = DropPath(0.5, seed=0)
    for training in (False, None):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=training)), x)
    model = keras.Sequential([keras.Input((4, 4, 3)), layer])
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(DropPath(0.0)(x, training=True)), x)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_drop_path_drops_whole_samples_at_rate(rate):
    n = 4000
    x = np.random.default_rng(1).uniform(0.5, 1.5, size=(n, 3, 3, 2)).astype(np.float32)
    out = keras.ops.convert_to_numpy(DropPath(rate, seed=3)(x, training=True))
    dropped = np.all(out == 0, axis=(1, 2, 3))
    np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - rate), rtol=1e-6)
    sigma = np.sqrt(n * rate * (1 - rate))
    assert abs(dropped.sum() - n * rate) < 4.5 * sigma
    # E[y] = x: the mean over samples of y / x is 1 within the binomial error.
    ratio_mean = (out / x).mean(axis=(1, 2, 3)).mean()
    assert abs(ratio_mean - 1.0) < 4.5 * np.sqrt(rate / (1 - rate) / n)


def test_drop_path_new_masks_in_compiled_graph():
    layer = DropPath(0.5, seed=4)
    step = tf.function(lambda x: layer(x, training=True))
    x = tf.ones((64, 2))
    first, second = step(x).numpy(), step(x).numpy()
    assert not np.array_equal(first, second)
    assert set(np.unique(first)) <= {0.0, 2.0}


# -------------------------------------------------------------------------- AttentionPooling

@pytest.mark.parametrize(("height", "width", "channels", "heads", "key_dim"), [
    (1, 1, 4, 1, None), (3, 5, 8, 2, None), (7, 7, 12, 3, 5), (2, 9, 16, 4, 1),
])
def test_attention_pooling_shape_and_starts_as_average(height, width, channels, heads,
                                                       key_dim):
    x = np.random.default_rng(2).normal(size=(3, height, width, channels)).astype(np.float32)
    layer = AttentionPooling(num_heads=heads, key_dim=key_dim)
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == (3, channels)
    np.testing.assert_allclose(out, x.mean(axis=(1, 2)), atol=1e-5)


def test_attention_pooling_permutation_invariant():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 5, 8)).astype(np.float32)
    layer = AttentionPooling(num_heads=2)
    layer.build(x.shape)
    layer.query.assign(3.0 * rng.normal(size=(2, 4)).astype(np.float32))
    out = keras.ops.convert_to_numpy(layer(x))
    assert not np.allclose(out, x.mean(axis=(1, 2)), atol=1e-2)   # the query matters
    permuted = x.reshape(2, 20, 8)[:, rng.permutation(20)].reshape(2, 4, 5, 8)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(permuted)), out, atol=1e-5)


def test_attention_pooling_dynamic_spatial_size_and_dropout():
    layer = AttentionPooling(num_heads=2, dropout=0.5, seed=0)
    model = keras.Sequential([keras.Input((None, None, 6)), layer])
    for size in (3, 6):
        x = np.random.default_rng(size).normal(size=(2, size, size, 6)).astype(np.float32)
        np.testing.assert_allclose(model.predict(x, verbose=0), x.mean(axis=(1, 2)), atol=1e-5)
        trained = keras.ops.convert_to_numpy(layer(x, training=True))
        assert not np.allclose(trained, x.mean(axis=(1, 2)), atol=1e-3)


# ----------------------------------------------------------------------------- AuxiliaryHead

def test_auxiliary_head_in_training_model_not_in_export(tmp_path):
    model = small_model()
    training_model = with_auxiliary_head(model, "features")
    assert len(training_model.outputs) == 2
    heads = [layer for layer in training_model.layers if isinstance(layer, AuxiliaryHead)]
    assert len(heads) == 1 and heads[0].name == "auxiliary_head"
    assert training_model.outputs[1] is heads[0].output
    assert tuple(training_model.outputs[1].shape) == (None, 5)

    inference_model = strip_auxiliary(training_model)
    assert inference_model.name == "small" and len(inference_model.outputs) == 1
    assert not any(isinstance(layer, AuxiliaryHead) for layer in inference_model.layers)
    assert [layer.name for layer in inference_model.layers] == [
        layer.name for layer in model.layers]
    assert inference_model.get_layer("logits").kernel is model.get_layer("logits").kernel
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(inference_model.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6)

    path = tmp_path / "inference.keras"
    inference_model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "AuxiliaryHead" not in config and "auxiliary_head" not in config
    assert "AttentionPooling" in config and "SqueezeExcite" in config
    assert json.loads(config)["config"]["output_layers"] == ["logits", 0, 0]


def test_auxiliary_head_fit_trains_both_outputs_and_weights_the_loss():
    keras.utils.set_random_seed(0)
    model = small_model()
    training_model = with_auxiliary_head(model, "features", weight=0.25)
    assert auxiliary_loss_weights(training_model) == [1.0, 0.25]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    training_model.compile(keras.optimizers.SGD(0.1), loss=[loss, loss],
                           loss_weights=auxiliary_loss_weights(training_model))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=32)
    head = training_model.get_layer("auxiliary_head")
    before = {layer: keras.ops.convert_to_numpy(layer.kernel)
              for layer in (head, model.get_layer("logits"), model.get_layer("features"))}
    history = training_model.fit(x, (y, y), batch_size=16, epochs=2, verbose=0)
    assert {"loss", "logits_loss", "auxiliary_head_loss"} <= set(history.history)
    for layer, kernel in before.items():
        assert not np.allclose(keras.ops.convert_to_numpy(layer.kernel), kernel), layer.name

    batch_x, batch_y = x[:16], y[:16]
    main_logits, aux_logits = training_model.predict(batch_x, verbose=0)
    want = (sparse_ce_from_logits(batch_y, main_logits)
            + 0.25 * sparse_ce_from_logits(batch_y, aux_logits))
    got = training_model.evaluate(batch_x, (batch_y, batch_y), batch_size=16, verbose=0,
                                  return_dict=True)
    assert got["loss"] == pytest.approx(want, rel=1e-4)
    assert got["auxiliary_head_loss"] == pytest.approx(
        sparse_ce_from_logits(batch_y, aux_logits), rel=1e-4)


# ----------------------------------------------------------------- reload in a fresh process

RELOAD_SCRIPT = """
import sys
import keras, numpy as np
import tfmagic
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
x = np.load(sys.argv[2])
main, aux = model.predict(x, verbose=0)
inference = tfmagic.layers.strip_auxiliary(model).predict(x, verbose=0)
np.save(sys.argv[3], np.stack([main, aux, inference]))
"""


def test_saved_model_reloads_in_fresh_process(tmp_path):
    model = small_model()
    rng = np.random.default_rng(5)
    model.get_layer("attention_pool").query.assign(rng.normal(size=(2, 8)).astype(np.float32))
    model.get_layer("se").reduce_bias.assign(rng.normal(size=4).astype(np.float32))
    training_model = with_auxiliary_head(model, "features", weight=0.3)
    x = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    main, aux = training_model.predict(x, verbose=0)
    path = tmp_path / "model.keras"
    training_model.save(path)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "out.npy")], check=True, cwd=REPO, env=env, timeout=120)
    reloaded = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(reloaded[0], main, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reloaded[1], aux, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reloaded[2], main, rtol=1e-5, atol=1e-6)


def test_config_round_trip():
    layers = [SqueezeExcite(0.5, 2, "gelu", "hard_sigmoid"), DropPath(0.1, seed=3),
              AttentionPooling(4, key_dim=3, dropout=0.1, seed=1), AuxiliaryHead(7, weight=0.5)]
    for layer in layers:
        config = layer.get_config()
        assert type(layer).from_config(config).get_config() == config


# --------------------------------------------------------------------------- mixed precision

@pytest.mark.parametrize("make", [
    lambda: SqueezeExcite(gate="hard_sigmoid"), lambda: SqueezeExcite(activation="swish"),
    lambda: DropPath(0.5, seed=0), lambda: AttentionPooling(num_heads=4, dropout=0.1, seed=0),
    lambda: AuxiliaryHead(10),
], ids=["se_hard", "se_swish", "drop_path", "attention_pooling", "auxiliary_head"])
def test_layers_under_mixed_float16(mixed_float16, make):
    layer = make()
    x = 50.0 * np.random.default_rng(0).normal(size=(4, 6, 6, 16)).astype(np.float32)
    for training in (False, True):
        out = layer(x, training=training) if isinstance(layer, DropPath | AttentionPooling) \
            else layer(x)
        assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(out).astype(np.float32)))
    expected = "float32" if isinstance(layer, AuxiliaryHead) else "float16"
    assert layer.compute_dtype == expected
    assert all(v.dtype == "float32" for v in layer.trainable_variables)


def test_training_model_fits_under_mixed_float16(mixed_float16):
    training_model = with_auxiliary_head(small_model(), "features")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    training_model.compile("adam", loss=[loss, loss],
                           loss_weights=auxiliary_loss_weights(training_model))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=16)
    history = training_model.fit(x, (y, y), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    main, aux = training_model.predict(x, verbose=0)
    assert main.dtype == np.float16 and aux.dtype == np.float32


# ------------------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize(("make", "name"), [
    (lambda: SqueezeExcite(ratio=0), "ratio"),
    (lambda: SqueezeExcite(ratio=1.5), "ratio"),
    (lambda: SqueezeExcite(ratio="0.25"), "ratio"),
    (lambda: SqueezeExcite(min_channels=0), "min_channels"),
    (lambda: SqueezeExcite(min_channels=2.0), "min_channels"),
    (lambda: SqueezeExcite(activation="no_such_activation"), "activation"),
    (lambda: SqueezeExcite(gate="tanh"), "gate"),
    (lambda: DropPath(1.0), "rate"),
    (lambda: DropPath(-0.1), "rate"),
    (lambda: DropPath(0.1, seed=-1), "seed"),
    (lambda: AttentionPooling(num_heads=0), "num_heads"),
    (lambda: AttentionPooling(key_dim=0), "key_dim"),
    (lambda: AttentionPooling(dropout=1.0), "dropout"),
    (lambda: AttentionPooling(num_heads=3)(np.zeros((1, 2, 2, 8), np.float32)), "num_heads"),
    (lambda: SqueezeExcite()(np.zeros((2, 8), np.float32)), "input_shape"),
    (lambda: AuxiliaryHead(1), "num_classes"),
    (lambda: AuxiliaryHead(True), "num_classes"),
    (lambda: AuxiliaryHead(10, weight=-0.1), "weight"),
    (lambda: with_auxiliary_head(small_model(), "no_such_layer"), "feature_layer_name"),
    (lambda: with_auxiliary_head(small_model(), "features", weight=-1), "weight"),
    (lambda: with_auxiliary_head(small_model(), "features", name="logits"), "name"),
    (lambda: strip_auxiliary(small_model()), "training_model"),
    (lambda: auxiliary_loss_weights(small_model()), "training_model"),
])
def test_bad_arguments_raise_value_error_naming_them(make, name):
    with pytest.raises(ValueError, match=rf"^{name}="):
        make()
