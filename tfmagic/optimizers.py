"""Optimizers with weight decay done right: L2 or decoupled, constant or scheduled.

`build_optimizer` returns a Keras optimizer (SGD with Nesterov momentum, SGD with momentum,
Adam or AdamW) whose weight decay:

- follows one of two conventions (`decay_mode`):
    - `"l2"`: `g <- g + wd * w` before the optimizer's update. This is PyTorch's
      `torch.optim.SGD(weight_decay=wd)`, the convention of most published values
      (the checklist's 5e-5 "generic" and 3e-4 for CIFAR-100).
    - `"decoupled"`: `w <- w - lr * wd * w` beside the update (Loshchilov & Hutter; Keras'
      own `weight_decay` argument and AdamW).
  For plain SGD without momentum the two are the same update. With momentum m, an L2
  coefficient acts through the momentum buffer, so its effective strength is about
  `1 / (1 - m)` times larger: `wd_decoupled ~= wd_l2 / (1 - m)` (x10 for m = 0.9) gives
  a similar equilibrium. For Adam they differ in kind: L2 decay is rescaled per weight
  by Adam's normalization, decoupled decay is not (that is AdamW);
- is skipped for biases and normalization parameters (every variable of rank <= 1)
  unless `exclude_norm_and_bias=False`;
- may follow a schedule (`weight_decay_schedule`, e.g. a
  `tfmagic.schedules.RegularizationSchedule`), evaluated at the optimizer's step inside the
  compiled train step. (Assigning `optimizer.weight_decay` from a callback does not work:
  a traced train function keeps the value it was traced with.)

The optimizers are registered Keras classes, so a model saved with its optimizer (and the
optimizer's schedules) reloads in a fresh process.

Example:

>>> from tfmagic.schedules import CosinePowerAnnealing, RegularizationSchedule
>>> lr = CosinePowerAnnealing(0.1, total_steps=1000, power=2.0, warmup_steps=50)
>>> wd = RegularizationSchedule(5e-4, "linear", end=1e-3, lr_schedule=lr)
>>> optimizer = build_optimizer("sgd_nesterov", lr, weight_decay_schedule=wd)
"""

import keras
from keras import ops

from tfmagic._checks import check, is_number
from tfmagic.registry import Registry

__all__ = ["DECAY_MODES", "OPTIMIZERS", "OPTIMIZER_NAMES", "Adam", "AdamW", "SGD",
           "build_optimizer"]

OPTIMIZERS = Registry("optimizer")
"""name -> ``build(learning_rate, momentum, decay_mode, **decay)``, the optimizer (``decay``:
``weight_decay``, ``weight_decay_schedule``, ``exclude_norm_and_bias``)."""
OPTIMIZER_NAMES = OPTIMIZERS
DECAY_MODES = ("l2", "decoupled")


class _WeightDecay:
    """Mixin for a Keras optimizer: tfmagic's weight decay replaces Keras' own.

    Keras' `weight_decay` attribute stays None outside the update, so Keras never decays on
    its own; the coefficient of a step comes from `current_weight_decay()`.
    """

    def __init__(self, *args, weight_decay=0.0, weight_decay_schedule=None, decay_mode="l2",
                 exclude_norm_and_bias=True, **kwargs):
        if isinstance(weight_decay_schedule, dict):
            weight_decay_schedule = keras.saving.deserialize_keras_object(weight_decay_schedule)
        check(decay_mode in DECAY_MODES, "decay_mode", decay_mode,
              f"must be one of {', '.join(DECAY_MODES)}")
        check(is_number(weight_decay) and weight_decay >= 0, "weight_decay", weight_decay,
              "must be >= 0")
        check(weight_decay_schedule is None or callable(weight_decay_schedule),
              "weight_decay_schedule", weight_decay_schedule,
              "must be a schedule called with the step (e.g. "
              "tfmagic.schedules.RegularizationSchedule)")
        super().__init__(*args, weight_decay=None, **kwargs)
        self.decay_coefficient = float(weight_decay)
        self.weight_decay_schedule = weight_decay_schedule
        self.decay_mode = decay_mode
        self.exclude_norm_and_bias = exclude_norm_and_bias

    @property
    def decays(self) -> bool:
        """Whether any weight decay is configured."""
        return self.weight_decay_schedule is not None or self.decay_coefficient > 0

    def current_weight_decay(self):
        """The decay coefficient at the optimizer's current step (a float32 tensor)."""
        if self.weight_decay_schedule is not None:
            return ops.cast(self.weight_decay_schedule(self.iterations), "float32")
        return ops.convert_to_tensor(self.decay_coefficient, "float32")

    def _use_weight_decay(self, variable):
        if self.exclude_norm_and_bias and len(variable.shape) <= 1:
            return False
        return super()._use_weight_decay(variable)

    def _apply_weight_decay(self, variables):
        if self.decay_mode != "decoupled" or not self.decays:
            return
        # Keras' distribution-aware decoupled decay, fed this step's coefficient.
        self.weight_decay = self.current_weight_decay()
        try:
            super()._apply_weight_decay(variables)
        finally:
            self.weight_decay = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if self.decay_mode == "l2" and self.decays:
            # Gradients are summed over replicas after this point: add 1/replicas of the term.
            replicas = getattr(getattr(self, "_distribution_strategy", None),
                               "num_replicas_in_sync", 1)
            wd = self.current_weight_decay() / replicas
            grads = [
                g + ops.cast(wd, v.dtype) * v if g is not None and self._use_weight_decay(v)
                else g
                for g, v in zip(grads, trainable_variables, strict=True)
            ]
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_decay=self.decay_coefficient,
            weight_decay_schedule=None if self.weight_decay_schedule is None
            else keras.saving.serialize_keras_object(self.weight_decay_schedule),
            decay_mode=self.decay_mode,
            exclude_norm_and_bias=self.exclude_norm_and_bias,
        )
        return config


@keras.saving.register_keras_serializable(package="tfmagic")
class SGD(_WeightDecay, keras.optimizers.SGD):
    """`keras.optimizers.SGD` with tfmagic's weight decay (see the module docstring)."""


@keras.saving.register_keras_serializable(package="tfmagic")
class Adam(_WeightDecay, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with tfmagic's weight decay (see the module docstring)."""


@keras.saving.register_keras_serializable(package="tfmagic")
class AdamW(_WeightDecay, keras.optimizers.Adam):
    """AdamW: Adam with decoupled, optionally scheduled, weight decay.

    The same update as `keras.optimizers.AdamW` (which is Keras' Adam with its decoupled
    `weight_decay`), with tfmagic's exclusions and schedules.
    """

    def __init__(self, *args, decay_mode="decoupled", **kwargs):
        if decay_mode != "decoupled":
            raise ValueError(
                f"decay_mode={decay_mode!r} is not allowed for AdamW: its decay is decoupled "
                "by definition (use Adam for L2 decay)"
            )
        super().__init__(*args, decay_mode=decay_mode, **kwargs)


def build_optimizer(name, learning_rate, *, momentum=0.9, weight_decay=0.0,
                    weight_decay_schedule=None, decay_mode="l2", exclude_norm_and_bias=True):
    """Build one of the checklist's optimizers.

    Args:
        name: `sgd_nesterov` (SGD with Nesterov momentum, the recommended default), `sgd`
            (SGD with classical momentum), `adam`, or `adamw` (Adam with decoupled decay:
            `decay_mode` is "decoupled" whatever is passed).
        learning_rate: a float or a schedule (e.g. `tfmagic.schedules.CosinePowerAnnealing`).
        momentum: SGD momentum in [0, 1); for Adam, beta_1 stays at Keras' 0.9.
        weight_decay: constant decay coefficient (>= 0), used when no schedule is given.
        weight_decay_schedule: a callable of the step giving the coefficient of each step.
        decay_mode: "l2" (added to the gradient) or "decoupled" (w -= lr * wd * w).
        exclude_norm_and_bias: do not decay variables of rank <= 1 (biases, batch-norm
            gamma and beta).

    Returns:
        A `tfmagic.optimizers.SGD`, `Adam` or `AdamW`.

    Example:

    >>> optimizer = build_optimizer("sgd_nesterov", 0.1, weight_decay=5e-4)
    >>> optimizer.nesterov, optimizer.decay_mode
    (True, 'l2')
    """
    check(name in OPTIMIZERS, "name", name, f"must be one of {', '.join(OPTIMIZERS)}")
    check(is_number(momentum) and 0 <= momentum < 1, "momentum", momentum, "must be in [0, 1)")
    decay = dict(weight_decay=weight_decay, weight_decay_schedule=weight_decay_schedule,
                 exclude_norm_and_bias=exclude_norm_and_bias)
    return OPTIMIZERS.build(name, learning_rate, momentum, decay_mode, **decay)


@OPTIMIZERS.register("sgd_nesterov", help="SGD with Nesterov momentum")
def _sgd_nesterov(learning_rate, momentum, decay_mode, **decay):
    return SGD(learning_rate=learning_rate, momentum=momentum, nesterov=True,
               decay_mode=decay_mode, **decay)


@OPTIMIZERS.register("sgd", help="SGD with classical momentum")
def _sgd(learning_rate, momentum, decay_mode, **decay):
    return SGD(learning_rate=learning_rate, momentum=momentum, decay_mode=decay_mode, **decay)


@OPTIMIZERS.register("adam", help="Adam (momentum unused)")
def _adam(learning_rate, momentum, decay_mode, **decay):
    return Adam(learning_rate=learning_rate, decay_mode=decay_mode, **decay)


@OPTIMIZERS.register("adamw", help="Adam with decoupled weight decay (weight_decay_mode unused)")
def _adamw(learning_rate, momentum, decay_mode, **decay):
    return AdamW(learning_rate=learning_rate, **decay)
