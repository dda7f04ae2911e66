"""Model surgery: rewrite an existing functional Keras model into a new one with a change.

Both functions take a functional (or Sequential) ``keras.Model`` and return
``(new_model, report)``. The new model is a functional model over new layer objects: every
layer is cloned from its config and gets a copy of the original layer's weights (the changed
ones excepted), so the rewritten model trains independently and the original model is left
as it was. ``Lambda`` layers are the exception: they hold no weights, and rebuilding one from
its config would need unsafe deserialization, so the same object is called in the new model.
Layers keep their names and dtype policies (new layers take the policy of the layer they
follow or replace). A Sequential model comes back as an equivalent functional model. Nested
functional or Sequential models (a ``keras.applications`` backbone inside a model with its own
head) are rewritten too, and their layers are named ``"<nested model>/<layer>"`` in reports and
in ``blocks``; a pattern that crosses the boundary of a nested model is not followed. A
compiled model gives a new model compiled from the same compile config (a fresh optimizer).
Subclassed models have no graph to rewrite and raise a ``TypeError``. A layer called at
several places of the graph is followed by the same new layer (or stripped of its activation)
at all of them; a shared activation layer is left alone (see below).

``set_downscaling_activation(model, activation)``
    Replaces the activation that follows each *strided* convolution: a ``Conv2D``,
    ``DepthwiseConv2D`` or ``SeparableConv2D`` with a stride above 1 (stride 2 in every
    usual network). Starting at the convolution's output, the rule follows the graph through
    at most one normalization layer (``BatchNormalization``, ``LayerNormalization``,
    ``GroupNormalization``), each step only where the tensor feeds exactly one layer, and takes
    the activation layer it reaches (``ReLU``, ``LeakyReLU``, ``ELU``, ``PReLU`` or a
    non-linear ``Activation``). Anything else ends the walk and the convolution is left alone
    and listed under ``skipped``: a projection shortcut (conv, BN, then ``Add``), a conv whose
    output feeds several layers or is a model output. An activation fused into the strided
    convolution (``Conv2D(..., strides=2, activation="relu")``) is split off: the convolution
    is rebuilt with ``activation=None`` (same weights) and followed by the new activation
    layer, named ``"<conv>_downscale_act"``. A separate activation layer is swapped for the new
    one under the same name. An activation that is already the requested one, or an
    activation layer called at several places of the graph, is left alone (``skipped``).
    Zero-padding before a strided convolution plays no part. The new layers are those of
    :mod:`tfmagic.models.common`: ``"leaky_relu"`` is ``LeakyReLU(negative_slope=0.1)``,
    ``"relu"`` is ``ReLU()``, ``"swish"`` (or its other name ``"silu"``) is
    ``Activation("swish")``.

``add_squeeze_excite(model, ratio=0.25, min_channels=8, blocks="auto")``
    Inserts a :class:`tfmagic.layers.SqueezeExcite` after chosen layers, named
    ``"<layer><name_suffix>"``. With ``blocks="auto"`` blocks are found structurally:

    - *Residual blocks*: each ``Add`` merges a residual branch with a shortcut. The residual
      branch is the input that is farthest from the model inputs (longest path in layers);
      layers that are the identity at inference (``Dropout`` and friends, ``DropPath``) at its
      end are stepped over, so the SE goes right after the branch's last real layer (its last
      batch norm in ResNet, MobileNetV2 and EfficientNet) and before any stochastic depth.
      An ``Add`` whose inputs are equally far is skipped.
    - *Blocks without a residual add*: a linear bottleneck, i.e. a ``BatchNormalization`` fed
      by a convolution (without fused activation) whose output goes to at least one
      convolution and otherwise only to ``Add`` layers (as the next block's shortcut): no
      activation follows it. That is the projection of an inverted-residual or MBConv block
      that changes the shape; the SE goes after that batch norm.
    - A block that already has a gate is skipped and listed under ``skipped``: searching
      backwards from the insertion point, over every input, up to the previous block (the
      output of an ``Add``, another insertion point or a model input), a ``Multiply`` or a
      ``SqueezeExcite`` is found. That is the case of every EfficientNet block: EfficientNet
      gets no second SE.
    - Only layers whose output is ``(batch, ..., channels)`` of rank >= 3 qualify.

    With ``blocks=[names]`` an SE goes after exactly the layers named, no block detection and
    no skipping. Counts on ``keras.applications`` models (``weights=None``): ResNet50 gets 16
    (its 16 bottlenecks, all residual), MobileNetV2 17 (10 residual, 7 not), EfficientNetB0 0
    (its 16 MBConv blocks are skipped as already gated).

The report
    :class:`SurgeryReport` lists one :class:`Change` per change (``"replaced"``: an activation
    layer swapped, ``"split"``: an activation split off its convolution, ``"inserted"``: a new
    SE layer), with the layer it relates to (``anchor``: the strided convolution or the layer
    the SE follows) and a description before and after, and one :class:`Skip` (layer and
    reason) per candidate left alone. ``report.changed`` names the layers of the new model that
    differ from the original's, ``report.count`` is the number of changes and ``str(report)``
    prints a summary line and one line per change and per skip.

Example:
    >>> import keras
    >>> inputs = keras.Input((32, 32, 3))
    >>> x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="stem_conv")(inputs)
    >>> x = keras.layers.BatchNormalization(name="stem_bn")(x)
    >>> x = keras.layers.ReLU(name="stem_relu")(x)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(10)(x), name="tiny")
    >>> new_model, report = set_downscaling_activation(model, "swish")
    >>> print(report)
    set_downscaling_activation on 'tiny': 1 changed, 0 skipped
      replaced stem_relu: ReLU() -> Activation('silu') (after strided stem_conv)
    >>> new_model, report = add_squeeze_excite(new_model, blocks=["stem_bn"])
    >>> report.changed
    ('stem_bn_se',)
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
from collections.abc import Callable, Sequence

import keras
from keras.src.models.functional import Functional

from tfmagic._checks import check, is_int, is_number
from tfmagic.layers import DropPath, SqueezeExcite, SubsampledConv2D
from tfmagic.models.common import DOWNSCALE_ACTIVATIONS

__all__ = [
    "Change",
    "Skip",
    "SurgeryReport",
    "add_squeeze_excite",
    "set_downscaling_activation",
    "subsample_strided_pointwise",
]

_ACTIVATION_ALIASES = {"silu": "swish"}
_CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
_NORMALIZATIONS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)
_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Activation,
)
_IDENTITY_AT_INFERENCE = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    DropPath,
)
_GATES = (keras.layers.Multiply, SqueezeExcite)
# The fused activation (as a conv serializes it) that equals each downscale activation.
_FUSED_EQUIVALENT = {"relu": "relu", "swish": "silu"}


@dataclasses.dataclass(frozen=True)
class Change:
    """One change: ``layer`` (name in the new model) was ``action`` next to ``anchor``.

    ``action`` is ``"replaced"`` (a layer swapped, same name), ``"split"`` (the
    activation fused into ``anchor`` moved to the new layer ``layer``) or ``"inserted"`` (a new
    layer after ``anchor``). ``before`` and ``after`` describe the layer before and after the
    change (``before`` is empty for an insertion).
    """

    layer: str
    action: str
    anchor: str
    before: str
    after: str

    def __str__(self) -> str:
        if self.action == "inserted":
            return f"inserted {self.layer}: {self.after} after {self.anchor}"
        if self.action == "split":
            return (
                f"split {self.layer}: {self.before} -> activation=None + {self.after} "
                f"(strided {self.anchor})"
            )
        if self.anchor == self.layer:
            return f"replaced {self.layer}: {self.before} -> {self.after}"
        return f"replaced {self.layer}: {self.before} -> {self.after} (after strided {self.anchor})"


@dataclasses.dataclass(frozen=True)
class Skip:
    """A candidate left alone: the layer and why."""

    layer: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.layer}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class SurgeryReport:
    """What a surgery changed in a model, and which candidates it left alone (and why)."""

    operation: str
    model: str
    changes: tuple[Change, ...]
    skipped: tuple[Skip, ...]

    @property
    def changed(self) -> tuple[str, ...]:
        """Names of the layers of the new model that are not copies of the original's.

        A split contributes two: the convolution rebuilt without activation and the new
        activation after it.
        """
        names = []
        for change in self.changes:
            if change.action == "split":
                names.append(change.anchor)
            names.append(change.layer)
        return tuple(names)

    @property
    def count(self) -> int:
        """The number of changes (activations replaced or split off, SE blocks inserted)."""
        return len(self.changes)

    def __str__(self) -> str:
        lines = [
            f"{self.operation} on {self.model!r}: {len(self.changes)} changed, "
            f"{len(self.skipped)} skipped"
        ]
        lines.extend(f"  {item}" for item in (*self.changes, *self.skipped))
        return "\n".join(lines)


def set_downscaling_activation(
    model: keras.Model, activation: str = "leaky_relu"
) -> tuple[keras.Model, SurgeryReport]:
    """Replaces the activation after each strided convolution (see the module docstring).

    Args:
        model: a functional or Sequential ``keras.Model``; it is not modified.
        activation: ``"leaky_relu"`` (``LeakyReLU(negative_slope=0.1)``), ``"relu"`` or
            ``"swish"`` (also spelt ``"silu"``).

    Returns:
        ``(new_model, report)``: a functional model with the other layers' weights copied, and a
        :class:`SurgeryReport` with one change per activation replaced.

    Raises:
        TypeError: if ``model`` is not a functional or Sequential ``keras.Model``.
        ValueError: for an unknown ``activation`` or an unbuilt Sequential model.

    Example:
        >>> from tfmagic.models import build_model
        >>> model = build_model("resnet20", (32, 32, 3), 10, downscale_activation="relu")
        >>> new_model, report = set_downscaling_activation(model, "swish")
        >>> report.changed
        ('stage2_block1_downscale_act', 'stage3_block1_downscale_act')
    """
    allowed = (*DOWNSCALE_ACTIVATIONS, *_ACTIVATION_ALIASES)
    check(
        isinstance(activation, str) and activation in allowed,
        "activation",
        activation,
        f"must be one of {', '.join(allowed)}",
    )
    activation = _ACTIVATION_ALIASES.get(activation, activation)
    _check_model(model)

    def planner(graph: _Graph, path: str) -> _Plan:
        return _plan_downscaling(graph, path, activation)

    return _surgery("set_downscaling_activation", model, planner)


def subsample_strided_pointwise(model: keras.Model) -> tuple[keras.Model, SurgeryReport]:
    """Replaces every strided 1x1 ``Conv2D`` by the equivalent ``SubsampledConv2D``.

    The new layer has the same name, config and weights, and computes the same output
    (:class:`tfmagic.layers.SubsampledConv2D`) without TensorFlow's oneDNN kernel that aborts
    the process on odd batches (BUILD_NOTES.md, "Odd batches"). ``keras.applications`` ResNets
    have them in every projection shortcut (and ResNet50's first bottleneck convolution of a
    stage); ``build_application`` rewrites every ``keras:`` model this way.

    Args:
        model: a functional or Sequential ``keras.Model``; it is not modified.

    Returns:
        ``(new_model, report)``: one ``"replaced"`` change per convolution.

    Example:
        >>> import keras
        >>> inputs = keras.Input((32, 32, 8))
        >>> x = keras.layers.Conv2D(16, 1, strides=2, name="shortcut")(inputs)
        >>> model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
        >>> new_model, report = subsample_strided_pointwise(model)
        >>> print(report.changes[0])
        replaced shortcut: Conv2D(1x1, strides=(2, 2)) -> SubsampledConv2D
    """
    _check_model(model)
    return _surgery("subsample_strided_pointwise", model, _plan_subsampling)


def _plan_subsampling(graph: _Graph, path: str) -> _Plan:
    plan = _Plan()
    for node in graph.nodes:
        conv = node.operation
        if (type(conv) is not keras.layers.Conv2D or id(conv) in plan.reclass
                or conv.kernel_size != (1, 1) or conv.strides == (1, 1) or conv.groups != 1):
            continue
        plan.reclass[id(conv)] = SubsampledConv2D
        plan.changes.append(Change(
            layer=path + conv.name, action="replaced", anchor=path + conv.name,
            before=f"Conv2D(1x1, strides={conv.strides})", after="SubsampledConv2D"))
    return plan


def add_squeeze_excite(
    model: keras.Model,
    *,
    ratio: float = 0.25,
    min_channels: int = 8,
    blocks: str | Sequence[str] = "auto",
    name_suffix: str = "_se",
) -> tuple[keras.Model, SurgeryReport]:
    """Inserts a ``SqueezeExcite`` after each block (see the module docstring for the rules).

    Args:
        model: a functional or Sequential ``keras.Model``; it is not modified.
        ratio: the SE bottleneck ratio, in (0, 1].
        min_channels: the smallest SE bottleneck width, an integer >= 1.
        blocks: ``"auto"`` to find the blocks structurally, or a list of layer names (nested
            layers as ``"<nested model>/<layer>"``) to put an SE after exactly those layers.
        name_suffix: appended to the name of the layer an SE follows to name the SE.

    Returns:
        ``(new_model, report)``: a functional model with the original layers' weights copied,
        and a :class:`SurgeryReport` with one change per SE inserted and, with ``"auto"``, one
        skip per block that already has a gate.

    Raises:
        TypeError: if ``model`` is not a functional or Sequential ``keras.Model``.
        ValueError: for an invalid argument, an unknown layer name in ``blocks``, a layer whose
            output is not ``(batch, ..., channels)``, or an SE name that is already taken.

    Example:
        >>> from tfmagic.models import build_model
        >>> model = build_model("resnet20", (32, 32, 3), 10, se=False)
        >>> new_model, report = add_squeeze_excite(model)
        >>> report.count, report.changed[0]
        (9, 'stage1_block1_bn2_se')
    """
    check(is_number(ratio) and 0 < ratio <= 1, "ratio", ratio, "must be a number in (0, 1]")
    check(
        is_int(min_channels) and min_channels >= 1,
        "min_channels",
        min_channels,
        "must be an integer >= 1",
    )
    check(
        isinstance(name_suffix, str) and name_suffix != "",
        "name_suffix",
        name_suffix,
        "must be a non-empty string",
    )
    auto = isinstance(blocks, str)
    if auto:
        check(blocks == "auto", "blocks", blocks, 'must be "auto" or a list of layer names')
        names: frozenset[str] = frozenset()
    else:
        entries = list(blocks) if isinstance(blocks, Sequence) else []
        check(
            bool(entries) and all(isinstance(name, str) for name in entries),
            "blocks",
            blocks,
            'must be "auto" or a non-empty list of layer names',
        )
        check(len(set(entries)) == len(entries), "blocks", blocks, "must not repeat a name")
        names = frozenset(entries)
    _check_model(model)
    if not auto:
        paths = _layer_paths(model)
        for name in entries:
            close = difflib.get_close_matches(name, paths, n=3)
            check(
                name in paths,
                "blocks",
                name,
                f"is not a layer of model {model.name!r}"
                + (f" (close: {', '.join(close)})" if close else ""),
            )

    def planner(graph: _Graph, path: str) -> _Plan:
        anchors = _explicit_anchors(graph, path, names) if not auto else _auto_anchors(graph, path)
        plan = _Plan(skips=anchors.skips)
        for node in anchors.nodes:
            layer = node.operation
            name = f"{layer.name}{name_suffix}"
            check(
                name not in graph.names,
                "name_suffix",
                name_suffix,
                f"gives {name!r}, a name already used in model {graph.model.name!r}",
            )
            se = SqueezeExcite(
                ratio=ratio, min_channels=min_channels, name=name, dtype=layer.dtype_policy
            )
            plan.after[id(layer)] = se
            plan.changes.append(
                Change(
                    layer=path + name,
                    action="inserted",
                    anchor=path + layer.name,
                    before="",
                    after=f"SqueezeExcite(ratio={ratio:g}, min_channels={min_channels})",
                )
            )
        return plan

    return _surgery("add_squeeze_excite", model, planner)


# ----------------------------------------------------------------------------------------------
# The graph of a functional model and the generic rewrite.


class _Graph:
    """The call nodes of one functional model in topological order, with tensor bookkeeping.

    Tensors are keyed by ``id``: ``producer`` maps a tensor to the node that outputs it,
    ``consumers`` to the nodes that take it, ``depth`` to the length of the longest path (in
    layer calls) from the model inputs.
    """

    def __init__(self, model: Functional):
        self.model = model
        by_depth = model._nodes_by_depth  # the traversal clone_model itself uses
        self.nodes = [
            node
            for depth in sorted(by_depth, reverse=True)
            for node in by_depth[depth]
            if node.operation is not None and not node.is_input
        ]
        self.input_layers = {
            id(tensor): node.operation
            for nodes in by_depth.values()
            for node in nodes
            if node.is_input
            for tensor in node.outputs
        }
        self.inputs = {id(tensor) for tensor in model.inputs}
        self.outputs = {id(tensor) for tensor in model.outputs}
        self.names = {operation.name for operation in model.operations}
        self.calls = collections.Counter(id(node.operation) for node in self.nodes)
        self.producer = {}
        self.consumers = collections.defaultdict(list)
        self.depth = dict.fromkeys(self.inputs, 0)
        for node in self.nodes:
            depth = 1 + max((self.depth.get(id(t), 0) for t in node.input_tensors), default=0)
            for tensor in node.input_tensors:
                self.consumers[id(tensor)].append(node)
            for tensor in node.outputs:
                self.producer[id(tensor)] = node
                self.depth[id(tensor)] = depth

    def feature_map(self, node) -> bool:
        """Whether the node has one output of shape ``(batch, ..., channels)``, rank >= 3."""
        return (
            len(node.outputs) == 1
            and len(node.outputs[0].shape) >= 3
            and node.outputs[0].shape[-1] is not None
        )


@dataclasses.dataclass
class _Plan:
    """The edits of one graph, keyed by ``id`` of the original layer."""

    replace: dict[int, keras.layers.Layer] = dataclasses.field(default_factory=dict)
    reclass: dict[int, type] = dataclasses.field(default_factory=dict)
    strip_activation: set[int] = dataclasses.field(default_factory=set)
    after: dict[int, keras.layers.Layer] = dataclasses.field(default_factory=dict)
    changes: list[Change] = dataclasses.field(default_factory=list)
    skips: list[Skip] = dataclasses.field(default_factory=list)


_Planner = Callable[["_Graph", str], _Plan]


def _check_model(model) -> None:
    if not isinstance(model, (Functional, keras.Sequential)):
        raise TypeError(
            "model must be a functional or Sequential keras.Model: only those have a graph of "
            f"layers to rewrite; got {type(model).__name__} "
            f"{getattr(model, 'name', model)!r} (a subclassed model cannot be rewritten)"
        )


def _as_functional(model: keras.Model) -> Functional:
    """The model itself, or a functional model over the same layer calls for a Sequential."""
    if isinstance(model, Functional):
        return model
    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError as error:
        raise ValueError(
            f"model: the Sequential model {model.name!r} is not built; give it a keras.Input "
            "first layer or call build() before rewriting it"
        ) from error
    return keras.Model(inputs[0], outputs[0], name=model.name)  # Sequential: one in, one out


def _is_nested_model(layer) -> bool:
    return isinstance(layer, (Functional, keras.Sequential))


def _layer_paths(model: keras.Model, path: str = "") -> set[str]:
    """Every layer of the model as ``"name"``, nested ones as ``"<nested model>/name"``."""
    paths = set()
    for node in _Graph(_as_functional(model)).nodes:
        paths.add(path + node.operation.name)
        if _is_nested_model(node.operation):
            paths |= _layer_paths(node.operation, f"{path}{node.operation.name}/")
    return paths


def _surgery(
    operation: str, model: keras.Model, planner: _Planner
) -> tuple[keras.Model, SurgeryReport]:
    new_model, changes, skips = _rewrite(model, planner, "")
    if model.compiled and not new_model.compiled:
        new_model.compile_from_config(model.get_compile_config())
    report = SurgeryReport(operation, model.name, tuple(changes), tuple(skips))
    return new_model, report


def _rewrite(
    model: keras.Model, planner: _Planner, path: str
) -> tuple[Functional, list[Change], list[Skip]]:
    """Clones ``model`` through its graph with the plan's edits; nested models recursively."""
    functional = _as_functional(model)
    graph = _Graph(functional)
    plan = planner(graph, path)
    changes, skips = list(plan.changes), list(plan.skips)
    source = {}  # id(new layer) -> the original layer it stands for
    pending_weights = set()  # ids of new layers that still need the original's weights

    def clone_function(layer):
        if _is_nested_model(layer):
            new, inner_changes, inner_skips = _rewrite(layer, planner, f"{path}{layer.name}/")
            changes.extend(inner_changes)
            skips.extend(inner_skips)
        elif id(layer) in plan.replace:
            new = plan.replace[id(layer)]
        elif isinstance(layer, keras.layers.Lambda):
            new = layer  # no weights; rebuilding one from its config needs unsafe deserialization
        else:
            config = layer.get_config()
            if id(layer) in plan.strip_activation:
                config["activation"] = None
            new = plan.reclass.get(id(layer), layer.__class__).from_config(config)
            pending_weights.add(id(new))
        source[id(new)] = layer
        return new

    def call_function(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        original = source[id(layer)]
        if id(layer) in pending_weights:
            layer.set_weights(original.get_weights())
            pending_weights.discard(id(layer))
        follower = plan.after.get(id(original))
        return outputs if follower is None else follower(outputs)

    # New inputs from the input layers' configs, so that they keep their names.
    inputs = keras.tree.map_structure(
        lambda tensor: (
            keras.layers.InputLayer.from_config(graph.input_layers[id(tensor)].get_config()).output
        ),
        functional.input,
    )
    new_model = keras.models.clone_model(
        functional,
        input_tensors=inputs,
        clone_function=clone_function,
        call_function=call_function,
    )
    return new_model, changes, skips


# ----------------------------------------------------------------------------------------------
# set_downscaling_activation


def _is_strided_conv(layer) -> bool:
    return isinstance(layer, _CONVOLUTIONS) and any(stride > 1 for stride in layer.strides)


def _is_activation(layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return layer.get_config()["activation"] != "linear"
    return isinstance(layer, _ACTIVATION_LAYERS)


def _describe(layer) -> str:
    """A short description of an activation layer, e.g. ``ReLU(max_value=6.0)``."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.Activation):
        return f"Activation({config['activation']!r})"
    if isinstance(layer, keras.layers.ReLU):
        shown = {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}
        settings = [f"{key}={float(config[key])}" for key in shown if config[key] != shown[key]]
        return f"ReLU({', '.join(settings)})"
    if isinstance(layer, keras.layers.LeakyReLU):
        return f"LeakyReLU(negative_slope={config['negative_slope']:g})"
    if isinstance(layer, keras.layers.ELU):
        return f"ELU(alpha={config['alpha']:g})"
    return type(layer).__name__


def _new_activation(activation: str, name: str, dtype) -> keras.layers.Layer:
    """The downscale activation layer, as :func:`tfmagic.models.common.activation` builds it."""
    return DOWNSCALE_ACTIVATIONS.build(activation, name, dtype)


def _unique_name(base: str, taken: set[str]) -> str:
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


def _plan_downscaling(graph: _Graph, path: str, activation: str) -> _Plan:
    plan = _Plan()
    taken = set(graph.names)
    seen = set()
    for node in graph.nodes:
        conv = node.operation
        if not _is_strided_conv(conv) or id(conv) in seen:
            continue
        seen.add(id(conv))
        fused = conv.get_config()["activation"]
        if fused != "linear":
            if fused == _FUSED_EQUIVALENT.get(activation):
                plan.skips.append(Skip(path + conv.name, f"fused activation is already {fused!r}"))
                continue
            name = _unique_name(f"{conv.name}_downscale_act", taken)
            plan.strip_activation.add(id(conv))
            new = _new_activation(activation, name, conv.dtype_policy)
            plan.after[id(conv)] = new
            plan.changes.append(
                Change(
                    layer=path + name,
                    action="split",
                    anchor=path + conv.name,
                    before=f"{type(conv).__name__}(activation={fused!r})",
                    after=_describe(new),
                )
            )
            continue
        target, reason = _following_activation(graph, node)
        if target is None:
            plan.skips.append(Skip(path + conv.name, reason))
            continue
        new = _new_activation(activation, target.name, target.dtype_policy)
        if type(new) is type(target) and _describe(new) == _describe(target):
            plan.skips.append(
                Skip(path + target.name, f"already {_describe(target)} (after {conv.name})")
            )
            continue
        plan.replace[id(target)] = new
        plan.changes.append(
            Change(
                layer=path + target.name,
                action="replaced",
                anchor=path + conv.name,
                before=_describe(target),
                after=_describe(new),
            )
        )
    return plan


def _following_activation(graph: _Graph, node) -> tuple[keras.layers.Layer | None, str]:
    """The activation layer after a conv node (through at most one norm), or why there is none."""
    tensor = node.outputs[0]
    chain = [node.operation.name]
    normalized = False
    while True:
        consumers = graph.consumers[id(tensor)]
        if id(tensor) in graph.outputs or not consumers:
            return None, f"{' -> '.join(chain)} is a model output, no activation"
        if len(consumers) > 1:
            return None, f"{' -> '.join(chain)} feeds {len(consumers)} layers"
        following = consumers[0].operation
        chain.append(following.name)
        if _is_activation(following):
            if graph.calls[id(following)] > 1:
                return None, f"activation {following.name} is called at several places"
            return following, ""
        if isinstance(following, _NORMALIZATIONS) and not normalized:
            normalized = True
            tensor = consumers[0].outputs[0]
            continue
        return None, f"{' -> '.join(chain)} ({type(following).__name__}): no activation follows"


# ----------------------------------------------------------------------------------------------
# add_squeeze_excite


@dataclasses.dataclass
class _Anchors:
    nodes: list = dataclasses.field(default_factory=list)
    skips: list[Skip] = dataclasses.field(default_factory=list)


def _explicit_anchors(graph: _Graph, path: str, names: frozenset[str]) -> _Anchors:
    anchors = _Anchors()
    done = set()
    for node in graph.nodes:
        layer = node.operation
        if path + layer.name not in names or id(layer) in done:
            continue
        done.add(id(layer))
        check(
            graph.feature_map(node),
            "blocks",
            path + layer.name,
            "must name layers whose output is (batch, ..., channels) of rank >= 3; "
            f"its output is {[tuple(t.shape) for t in node.outputs]}",
        )
        anchors.nodes.append(node)
    return anchors


def _auto_anchors(graph: _Graph, path: str) -> _Anchors:
    candidates = []
    skips = []
    for node in graph.nodes:
        layer = node.operation
        if isinstance(layer, keras.layers.Add) and len(node.input_tensors) >= 2:
            anchor, reason = _residual_branch_end(graph, node)
            if anchor is None:
                skips.append(Skip(path + layer.name, reason))
            else:
                candidates.append(anchor)
        elif _is_linear_bottleneck(graph, node):
            candidates.append(node)
    unique = list({id(node): node for node in candidates}.values())
    boundaries = set(graph.inputs)
    boundaries.update(id(node.outputs[0]) for node in unique)
    boundaries.update(
        id(node.outputs[0]) for node in graph.nodes if isinstance(node.operation, keras.layers.Add)
    )
    anchors = _Anchors(skips=skips)
    for node in unique:
        gate = _existing_gate(graph, node, boundaries)
        if gate is not None:
            anchors.skips.append(
                Skip(
                    path + node.operation.name,
                    f"block already gated by {gate.name} ({type(gate).__name__})",
                )
            )
        else:
            anchors.nodes.append(node)
    return anchors


def _residual_branch_end(graph: _Graph, add_node) -> tuple[object | None, str]:
    """The node ending the residual branch of an ``Add`` (the deepest input), or why not."""
    tensors = sorted(add_node.input_tensors, key=lambda t: graph.depth[id(t)], reverse=True)
    if graph.depth[id(tensors[0])] == graph.depth[id(tensors[1])]:
        return None, "inputs equally far from the model inputs: no residual branch to tell"
    tensor = tensors[0]
    node = graph.producer.get(id(tensor))
    while (
        node is not None
        and isinstance(node.operation, _IDENTITY_AT_INFERENCE)
        and len(graph.consumers[id(node.input_tensors[0])]) == 1
    ):
        node = graph.producer.get(id(node.input_tensors[0]))
    if node is None:
        return None, "the residual branch starts at a model input"
    if not graph.feature_map(node):
        return None, f"{node.operation.name} does not output (batch, ..., channels)"
    return node, ""


def _is_linear_bottleneck(graph: _Graph, node) -> bool:
    """A batch norm fed by a conv whose output goes to convs, and maybe to adds, only."""
    if not isinstance(node.operation, keras.layers.BatchNormalization):
        return False
    producer = graph.producer.get(id(node.input_tensors[0]))
    output = node.outputs[0]
    consumers = graph.consumers[id(output)]
    return (
        producer is not None
        and isinstance(producer.operation, _CONVOLUTIONS)
        and producer.operation.get_config()["activation"] == "linear"
        and id(output) not in graph.outputs
        and any(isinstance(c.operation, _CONVOLUTIONS) for c in consumers)
        and all(isinstance(c.operation, (*_CONVOLUTIONS, keras.layers.Add)) for c in consumers)
        and graph.feature_map(node)
    )


def _existing_gate(graph: _Graph, anchor, boundaries: set[int]):
    """A gate layer found searching back from ``anchor`` to the previous block, or None."""
    stack, visited = [anchor], {id(anchor)}
    while stack:
        node = stack.pop()
        if isinstance(node.operation, _GATES):
            return node.operation
        for tensor in node.input_tensors:
            producer = graph.producer.get(id(tensor))
            if id(tensor) in boundaries or producer is None or id(producer) in visited:
                continue
            visited.add(id(producer))
            stack.append(producer)
    return None
