"""Model layers from the checklist: squeeze-excite, stochastic depth, attention pooling and an
auxiliary classifier head.

Every layer is written with `keras.ops`, registered under the "tfmagic" package and has a
`get_config`, so a model using them saved as `.keras` reloads with
`keras.saving.load_model(path, safe_mode=True)` and no `custom_objects` once `tfmagic.layers`
is imported. Under a mixed-precision policy the variables are float32 and the layers compute
in the layer's compute dtype (float16 or bfloat16); the few reductions that lose precision in
16 bits (spatial means, the attention softmax) accumulate in float32 and are cast back.

Layers take channels-last inputs `(batch, ..., channels)`: images `(B, H, W, C)` or token
sequences `(B, N, C)`; "spatial" below means every axis between the batch and the channels.

Auxiliary heads: train with the head, export without it
--------------------------------------------------------

An auxiliary head is a second classifier on an intermediate feature map; its loss, times a
weight, is added to the main loss while training, and the head is thrown away afterwards. Here
that is three plain functions around an ordinary functional model:

1. `with_auxiliary_head(model, feature_layer_name, weight=0.4)` returns the *training model*:
   a functional model over the same layers (and so the same weights) as `model`, with two
   outputs, `[main logits, auxiliary logits]`; the second comes from an `AuxiliaryHead` layer
   (global average pooling, then a float32 `Dense`) applied to the output of
   `feature_layer_name`.
2. Compile it with the same loss for both outputs and `loss_weights=[1, weight]`;
   `auxiliary_loss_weights(training_model)` returns that list from the head. The total loss is
   `main_loss + weight * aux_loss`. `model.fit` wants one target per output: pass the integer
   labels twice, `fit(x, (y, y))`, or map a `tf.data` dataset with
   `lambda x, y: (x, (y, y))`.
3. `strip_auxiliary(training_model)` returns the *inference model*: the single-output
   functional model from the same inputs to the main logits. The head is not on that path, so
   it is not part of that model or of anything saved from it; the weights are shared with the
   training model (no copy), so it is up to date after every step of training. Export that one.

`model` itself is never modified: after training it already holds the trained weights, and
`strip_auxiliary` gives an equivalent model also from a reloaded training model.

Example:

>>> import keras, numpy as np
>>> inputs = keras.Input((8, 8, 3))
>>> features = keras.layers.Conv2D(8, 3, activation="relu", name="features")(inputs)
>>> pooled = keras.layers.GlobalAveragePooling2D()(features)
>>> model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(pooled))
>>> training_model = with_auxiliary_head(model, "features", weight=0.4)
>>> loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
>>> training_model.compile("adam", loss=[loss, loss],
...                        loss_weights=auxiliary_loss_weights(training_model))
>>> x, y = np.zeros((4, 8, 8, 3), "float32"), np.arange(4)
>>> _ = training_model.fit(x, (y, y), verbose=0)
>>> inference_model = strip_auxiliary(training_model)
>>> len(training_model.outputs), len(inference_model.outputs)
(2, 1)
"""

import keras
from keras import ops

from tfmagic._checks import check, is_int, is_number

__all__ = [
    "GATES",
    "AttentionPooling",
    "AuxiliaryHead",
    "DropPath",
    "SqueezeExcite",
    "SubsampledConv2D",
    "auxiliary_loss_weights",
    "reduced_channels",
    "strip_auxiliary",
    "with_auxiliary_head",
]

GATES = ("sigmoid", "hard_sigmoid")
_GATE_FUNCTIONS = {"sigmoid": ops.sigmoid, "hard_sigmoid": ops.hard_sigmoid}
_TRAINING_SUFFIX = "_with_auxiliary_head"


def _channels(input_shape, layer) -> int:
    """The channel count of a channels-last input shape of rank >= 3."""
    shape = tuple(input_shape)
    check(len(shape) >= 3 and shape[-1] is not None, "input_shape", shape,
          f"{layer} needs (batch, ..., channels) inputs of rank >= 3 with known channels")
    return int(shape[-1])


def _accumulation_dtype(dtype) -> str:
    """float32 for 16-bit floats (whose sums lose precision), else the dtype itself."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _spatial_mean(inputs):
    """Mean over the spatial axes, accumulated in at least float32; (B, ..., C) -> (B, C)."""
    axes = tuple(range(1, len(inputs.shape) - 1))
    wide = ops.cast(inputs, _accumulation_dtype(inputs.dtype))
    return ops.cast(ops.mean(wide, axis=axes), inputs.dtype)


def _check_seed(seed) -> None:
    check(seed is None or (is_int(seed) and seed >= 0), "seed", seed,
          "must be None or an integer >= 0")


def _is_activation_name(name) -> bool:
    if not isinstance(name, str):
        return False
    try:
        keras.activations.get(name)
    except (ValueError, TypeError):
        return False
    return True


def reduced_channels(channels: int, ratio: float, min_channels: int) -> int:
    """The bottleneck width of `SqueezeExcite`: `max(min_channels, round(channels * ratio))`.

    `round` is Python's (halves to even: 10 * 0.25 = 2.5 gives 2).

    >>> reduced_channels(64, 0.25, 8), reduced_channels(16, 0.25, 8)
    (16, 8)
    """
    return max(min_channels, round(channels * ratio))


@keras.saving.register_keras_serializable(package="tfmagic")
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-excitation: rescale each channel by a gate computed from the whole input.

    With x of shape (B, ..., C), R = `reduced_channels(C, ratio, min_channels)`:

        s = mean of x over the spatial axes                      (B, C)
        g = gate(act(s @ W1 + b1) @ W2 + b2)                     (B, C), W1: C x R, W2: R x C
        y = x * g, g broadcast over the spatial axes

    The two dense products are the 1x1 convolutions of the paper applied to a 1x1 map.
    Parameters: 2*C*R + R + C. `gate="sigmoid"` gives g in (0, 1); `"hard_sigmoid"` is
    `relu6(z + 3) / 6`, in [0, 1], cheaper on mobile hardware (MobileNetV3).

    Args:
        ratio: R / C before the floor, in (0, 1]; 0.25 is the usual choice.
        min_channels: the smallest R, an integer >= 1.
        activation: the name of a Keras activation after the reduction ("relu", "swish", ...).
        gate: "sigmoid" or "hard_sigmoid".

    Example:

    >>> layer = SqueezeExcite(ratio=0.25)
    >>> tuple(layer(ops.ones((2, 4, 4, 64))).shape), layer.count_params()   # R = 16
    ((2, 4, 4, 64), 2128)
    """

    def __init__(self, ratio=0.25, min_channels=8, activation="relu", gate="sigmoid",
                 **kwargs):
        check(is_number(ratio) and 0 < ratio <= 1, "ratio", ratio, "must be a number in (0, 1]")
        check(is_int(min_channels) and min_channels >= 1, "min_channels", min_channels,
              "must be an integer >= 1")
        check(_is_activation_name(activation), "activation", activation,
              "must be the name of a Keras activation, e.g. relu, swish, gelu")
        check(gate in GATES, "gate", gate, f"must be one of {', '.join(GATES)}")
        super().__init__(**kwargs)
        self.ratio = float(ratio)
        self.min_channels = int(min_channels)
        self.activation = activation
        self.gate = gate
        self._activation = keras.activations.get(activation)

    def build(self, input_shape):
        channels = _channels(input_shape, "SqueezeExcite")
        self.reduced = reduced_channels(channels, self.ratio, self.min_channels)
        self.reduce_kernel = self.add_weight(
            shape=(channels, self.reduced), initializer="glorot_uniform", name="reduce_kernel")
        self.reduce_bias = self.add_weight(
            shape=(self.reduced,), initializer="zeros", name="reduce_bias")
        self.expand_kernel = self.add_weight(
            shape=(self.reduced, channels), initializer="glorot_uniform", name="expand_kernel")
        self.expand_bias = self.add_weight(
            shape=(channels,), initializer="zeros", name="expand_bias")

    def call(self, inputs):
        squeezed = _spatial_mean(inputs)
        hidden = self._activation(ops.matmul(squeezed, self.reduce_kernel) + self.reduce_bias)
        gate = _GATE_FUNCTIONS[self.gate](ops.matmul(hidden, self.expand_kernel)
                                          + self.expand_bias)
        spatial_ones = (1,) * (len(inputs.shape) - 2)
        return inputs * ops.reshape(gate, (-1, *spatial_ones, inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "ratio": self.ratio,
            "min_channels": self.min_channels,
            "activation": self.activation,
            "gate": self.gate,
        }


@keras.saving.register_keras_serializable(package="tfmagic")
class DropPath(keras.layers.Layer):
    """Stochastic depth, per sample: drop a whole residual branch for some samples of a batch.

    In training, with u_b uniform in [0, 1) drawn per sample b:

        y_b = x_b * [u_b >= rate] / (1 - rate)

    so each sample is zeroed with probability `rate` and the kept ones are scaled to keep the
    expected value: E[y] = x. At inference (`training` False or None) y = x. Put it on the
    residual branch, before the addition: `x + DropPath(rate)(branch(x))`.

    The random draws come from a `keras.random.SeedGenerator` whose state is a variable, so
    every training step inside a compiled `train_step` draws new masks.

    Args:
        rate: the probability of dropping a sample, in [0, 1).
        seed: None (non-deterministic) or an integer >= 0; a layer created with the same seed
            draws the same masks for the same sequence of calls.

    Example:

    >>> layer = DropPath(0.5, seed=0)
    >>> bool(ops.all(layer(ops.ones((4, 3)), training=False) == 1.0))
    True
    >>> sorted({float(v) for v in ops.convert_to_numpy(layer(ops.ones((64, 3)), training=True))
    ...         .ravel()})
    [0.0, 2.0]
    """

    def __init__(self, rate, seed=None, **kwargs):
        check(is_number(rate) and 0 <= rate < 1, "rate", rate, "must be a number in [0, 1)")
        _check_seed(seed)
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0:
            return inputs
        shape = (ops.shape(inputs)[0], *(1,) * (len(inputs.shape) - 1))
        noise = keras.random.uniform(shape, seed=self.seed_generator)
        keep = ops.cast(noise >= self.rate, inputs.dtype) * (1.0 / (1.0 - self.rate))
        return inputs * keep

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfmagic")
class SubsampledConv2D(keras.layers.Conv2D):
    """A strided 1x1 `Conv2D` computed as subsampling followed by a stride-1 1x1 convolution.

    A 1x1 kernel with stride s reads only the pixels at rows and columns 0, s, 2s, ..., for
    "same" and "valid" padding alike, so taking those pixels first and convolving them with
    stride 1 gives the same output from the same weights: the config, the weights and the
    output shape are those of the `Conv2D` it stands for. It exists because TensorFlow 2.21's
    oneDNN kernel for the strided 1x1 convolution aborts the whole process (`free(): invalid
    size`) when trained on an odd number of images on some CPUs; the stride-1 kernel does not
    (BUILD_NOTES.md, "Odd batches"). The projection shortcuts of the built-in ResNets use it,
    and `tfmagic.models.subsample_strided_pointwise` puts it into any functional model.

    Example:

    >>> import numpy as np
    >>> plain = keras.layers.Conv2D(4, 1, strides=2)
    >>> x = np.random.default_rng(0).normal(size=(3, 7, 7, 5)).astype("float32")
    >>> y = plain(x)
    >>> subsampled = SubsampledConv2D.from_config(plain.get_config())
    >>> _ = subsampled(x)
    >>> subsampled.set_weights(plain.get_weights())
    >>> bool(np.allclose(subsampled(x), y, atol=1e-6)), tuple(y.shape)
    (True, (3, 4, 4, 4))
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        check(self.kernel_size == (1, 1), "kernel_size", kernel_size, "must be 1 (a 1x1 kernel)")
        check(self.groups == 1, "groups", self.groups, "must be 1")

    def convolution_op(self, inputs, kernel):
        rows, columns = self.strides
        if self.data_format == "channels_first":
            inputs = inputs[:, :, ::rows, ::columns]
        else:
            inputs = inputs[:, ::rows, ::columns, :]
        return ops.conv(inputs, kernel, strides=1, padding="valid",
                        data_format=self.data_format)


@keras.saving.register_keras_serializable(package="tfmagic")
class AttentionPooling(keras.layers.Layer):
    """Global pooling by attention from one learned query: a drop-in for global average pooling.

    With x of shape (B, ..., C) flattened to N positions x_1..x_N, h = `num_heads`,
    d = C / h the channels of a head and k = `key_dim` (default d), for each head j:

        key_i^j   = (x_i @ W_k)^j                    W_k: C x (h k), no bias (it would cancel)
        a_i^j     = softmax_i(q^j . key_i^j / sqrt(k))
        y^j       = sum_i a_i^j x_i^j                x_i^j: the j-th block of d channels of x_i

    and y = concat_j y^j, shape (B, C). The values are the features themselves, so the output
    is, per head, a convex combination of the input's feature vectors, with the input's
    channels. The query q (h x k) starts at zero: all logits are 0, the attention is uniform
    and the layer starts as exactly global average pooling. Training moves q first (the
    gradient of W_k is zero while q is), then both.

    No positional encoding is used: the output does not change when the positions are
    permuted. `dropout` drops attention weights in training (kept ones scaled by
    1 / (1 - dropout)). The softmax is computed in at least float32.

    Args:
        num_heads: an integer >= 1 that divides C (checked when the layer is built).
        key_dim: channels of the keys and query per head; None for C / num_heads.
        dropout: dropout rate of the attention weights in training, in [0, 1).
        seed: None or an integer >= 0, for the dropout.

    Example:

    >>> layer = AttentionPooling(num_heads=2)
    >>> x = keras.random.normal((2, 5, 5, 8), seed=1)
    >>> y = layer(x)
    >>> tuple(y.shape), bool(ops.all(ops.abs(y - ops.mean(x, axis=(1, 2))) < 1e-5))
    ((2, 8), True)
    """

    def __init__(self, num_heads=1, key_dim=None, dropout=0.0, seed=None, **kwargs):
        check(is_int(num_heads) and num_heads >= 1, "num_heads", num_heads,
              "must be an integer >= 1")
        check(key_dim is None or (is_int(key_dim) and key_dim >= 1), "key_dim", key_dim,
              "must be None or an integer >= 1")
        check(is_number(dropout) and 0 <= dropout < 1, "dropout", dropout,
              "must be a number in [0, 1)")
        _check_seed(seed)
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = None if key_dim is None else int(key_dim)
        self.dropout = float(dropout)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        channels = _channels(input_shape, "AttentionPooling")
        check(channels % self.num_heads == 0, "num_heads", self.num_heads,
              f"must divide the input channels C={channels}")
        self._channels = channels
        self._head_dim = channels // self.num_heads
        self._key_dim = self.key_dim or self._head_dim
        self.key_kernel = self.add_weight(
            shape=(channels, self.num_heads * self._key_dim), initializer="glorot_uniform",
            name="key_kernel")
        self.query = self.add_weight(
            shape=(self.num_heads, self._key_dim), initializer="zeros", name="query")

    def call(self, inputs, training=None):
        batch = ops.shape(inputs)[0]
        tokens = ops.reshape(inputs, (batch, -1, self._channels))
        keys = ops.reshape(ops.matmul(tokens, self.key_kernel),
                           (batch, -1, self.num_heads, self._key_dim))
        logits = ops.einsum("bnhk,hk->bhn", keys, self.query) * (self._key_dim ** -0.5)
        logits = ops.cast(logits, _accumulation_dtype(logits.dtype))
        exp = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
        weights = ops.cast(exp / ops.sum(exp, axis=-1, keepdims=True), inputs.dtype)
        if training and self.dropout > 0:
            weights = keras.random.dropout(weights, self.dropout, seed=self.seed_generator)
        values = ops.reshape(tokens, (batch, -1, self.num_heads, self._head_dim))
        pooled = ops.einsum("bhn,bnhd->bhd", weights, values)
        return ops.reshape(pooled, (batch, self._channels))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "dropout": self.dropout,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="tfmagic")
class AuxiliaryHead(keras.layers.Layer):
    """An auxiliary classifier on an intermediate feature map: global average pooling, then
    a dense layer to float32 logits.

        logits = mean of x over the spatial axes @ W + b          W: C x num_classes

    The layer's dtype policy defaults to float32 (pass `dtype` to change it), so the logits
    and the loss computed from them stay float32 under a mixed-precision policy, like the
    main classifier of tfmagic's backbones. `weight` is the factor of its loss in the total
    loss; it is read by `auxiliary_loss_weights`. See the module docstring for how the head
    is used in training and left out of the exported model.

    Args:
        num_classes: an integer >= 2.
        weight: the factor of the auxiliary loss, a number >= 0 (0.3 to 0.4 in the Inception
            and PSPNet papers).

    Example:

    >>> head = AuxiliaryHead(10)
    >>> logits = head(ops.ones((2, 7, 7, 32), dtype="float16"))
    >>> tuple(logits.shape), keras.backend.standardize_dtype(logits.dtype)
    ((2, 10), 'float32')
    """

    def __init__(self, num_classes, weight=0.4, **kwargs):
        check(is_int(num_classes) and num_classes >= 2, "num_classes", num_classes,
              "must be an integer >= 2")
        check(is_number(weight) and weight >= 0, "weight", weight, "must be a number >= 0")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.weight = float(weight)

    def build(self, input_shape):
        channels = _channels(input_shape, "AuxiliaryHead")
        self.kernel = self.add_weight(
            shape=(channels, self.num_classes), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.num_classes,), initializer="zeros", name="bias")

    def call(self, inputs):
        return ops.matmul(_spatial_mean(inputs), self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "weight": self.weight}


def with_auxiliary_head(model, feature_layer_name, num_classes=None, weight=0.4,
                        name="auxiliary_head"):
    """The training model: `model`'s layers with outputs `[main logits, auxiliary logits]`.

    Args:
        model: a functional (or Sequential) Keras model with one output, the main logits.
        feature_layer_name: the name of the layer of `model` whose output feeds the head;
            its output must be (batch, ..., channels) of rank >= 3.
        num_classes: classes of the head; None for the size of the main output's last axis.
        weight: the factor of the auxiliary loss, a number >= 0.
        name: the name of the `AuxiliaryHead` layer (and of the second output's loss).

    Returns:
        A functional model named `<model.name>_with_auxiliary_head` sharing `model`'s layers.
        `model` is not changed. See the module docstring for compiling and exporting.
    """
    outputs = getattr(model, "outputs", None)
    check(isinstance(model, keras.Model) and outputs is not None and len(outputs) == 1,
          "model", getattr(model, "name", model),
          "must be a functional or Sequential Keras model with exactly one output")
    layer_names = [layer.name for layer in model.layers]
    check(feature_layer_name in layer_names, "feature_layer_name", feature_layer_name,
          f"must be the name of a layer of model {model.name!r}")
    check(name not in layer_names, "name", name,
          f"must differ from the names of the layers of model {model.name!r}")
    if num_classes is None:
        num_classes = outputs[0].shape[-1]
    head = AuxiliaryHead(num_classes, weight=weight, name=name)
    aux_logits = head(model.get_layer(feature_layer_name).output)
    return keras.Model(model.input, [outputs[0], aux_logits],
                       name=f"{model.name}{_TRAINING_SUFFIX}")


def _auxiliary_head(training_model) -> AuxiliaryHead:
    """The head of a model built by `with_auxiliary_head` (also after a reload)."""
    outputs = getattr(training_model, "outputs", None)
    heads = [layer for layer in getattr(training_model, "layers", ())
             if isinstance(layer, AuxiliaryHead)]
    check(outputs is not None and len(outputs) == 2 and len(heads) == 1
          and heads[0].output is outputs[1], "training_model",
          getattr(training_model, "name", training_model),
          "must be a model built by with_auxiliary_head: outputs [main logits, AuxiliaryHead "
          "logits]")
    return heads[0]


def auxiliary_loss_weights(training_model) -> list[float]:
    """`[1.0, weight]`, the `loss_weights` to compile a training model with."""
    return [1.0, _auxiliary_head(training_model).weight]


def strip_auxiliary(training_model):
    """The inference model: the training model's inputs to its main logits, without the head.

    The layers (and weights) are those of the training model, shared, not copied; the name is
    the original model's.
    """
    _auxiliary_head(training_model)
    name = training_model.name.removesuffix(_TRAINING_SUFFIX)
    return keras.Model(training_model.input, training_model.outputs[0], name=name)
