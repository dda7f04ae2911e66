"""Learning-rate and regularization schedules, computed in-graph from the step.

Every schedule here is a `keras.optimizers.schedules.LearningRateSchedule`: pass it as an
optimizer's `learning_rate` (or, for `RegularizationSchedule`, as `weight_decay_schedule` of
`tfmagic.optimizers.build_optimizer`). The value is computed from the step tensor inside the
compiled train step, so it works under `tf.function` and `jit_compile`. The result has the
step's dtype when the step is float32 or float64, and float32 for an integer step.

All schedules share one linear warm-up: from `warmup_start_lr` at step 0 to `peak_lr` at
`warmup_steps`; the decay proper runs over the remaining `total_steps - warmup_steps` steps.

Example:

>>> import keras
>>> schedule = CosinePowerAnnealing(0.1, total_steps=1000, power=2.0, cycles=2,
...                                 cycle_decay=0.5, warmup_steps=50)
>>> optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
>>> [round(float(schedule(s)), 4) for s in (0, 50, 524, 525, 1000)]
[0.0, 0.1, 0.0, 0.05, 0.0]
"""

import math

import keras
from keras import ops

from tfmagic._checks import check, is_number
from tfmagic.registry import Registry

__all__ = [
    "CosineAnnealing",
    "CosinePowerAnnealing",
    "GammaDecay",
    "REGULARIZATION_POLICIES",
    "RegularizationSchedule",
    "WarmupSchedule",
]

REGULARIZATION_POLICIES = Registry("policy")
"""The policies of `RegularizationSchedule`: name -> its value, a function of the schedule and
the float step."""


def _float_step(step):
    """The step as a float tensor: its own dtype when floating, else float32."""
    step = ops.convert_to_tensor(step)
    dtype = step.dtype if "float" in str(step.dtype) and "16" not in str(step.dtype) else "float32"
    return ops.cast(step, dtype)


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_lr` joined to a decay: the base of tfmagic's LR schedules.

    A subclass defines `_decay(steps, dtype)`, the value `steps` after the warm-up, and
    states its own LR cycles: `cycle_count`, how many there are, and `cycle_index(step)`,
    the 0-based index of the cycle a step is in (by default one cycle). The "cycles" and
    "lr" policies of `RegularizationSchedule` read these, so every weight-decay policy works
    with a new schedule.

    Example: linear decay to zero after the warm-up.

    >>> class LinearDecay(WarmupSchedule):
    ...     def _decay(self, steps, dtype):
    ...         return ops.cast(self.peak_lr * (1.0 - steps / self.decay_steps), dtype)
    >>> schedule = LinearDecay(0.1, total_steps=110, warmup_steps=10)
    >>> [round(float(schedule(s)), 3) for s in (5, 10, 60, 110)], schedule.cycle_count
    ([0.05, 0.1, 0.05, 0.0], 1)
    """

    cycle_count = 1

    def cycle_index(self, step):
        """The 0-based LR cycle of a step (a float tensor): 0 for a one-cycle schedule."""
        return ops.zeros_like(_float_step(step))

    def __init__(self, peak_lr, total_steps, warmup_steps=0, warmup_start_lr=0.0):
        check(is_number(peak_lr) and peak_lr > 0, "peak_lr", peak_lr, "must be a number > 0")
        check(isinstance(total_steps, int) and not isinstance(total_steps, bool)
              and total_steps >= 1, "total_steps", total_steps, "must be an integer >= 1")
        check(isinstance(warmup_steps, int) and not isinstance(warmup_steps, bool)
              and 0 <= warmup_steps < total_steps, "warmup_steps", warmup_steps,
              f"must be an integer in [0, total_steps={total_steps})")
        check(is_number(warmup_start_lr) and 0 <= warmup_start_lr <= peak_lr,
              "warmup_start_lr", warmup_start_lr, f"must be in [0, peak_lr={peak_lr}]")
        self.peak_lr = float(peak_lr)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_lr = float(warmup_start_lr)

    def __call__(self, step):
        step = _float_step(step)
        dtype = step.dtype
        warmup = max(self.warmup_steps, 1)
        warm = self.warmup_start_lr + (self.peak_lr - self.warmup_start_lr) * (step / warmup)
        progress_steps = ops.maximum(step - self.warmup_steps, 0.0)
        decayed = self._decay(progress_steps, dtype)
        return ops.where(step < self.warmup_steps, ops.cast(warm, dtype), decayed)

    @property
    def decay_steps(self) -> int:
        """Steps after the warm-up."""
        return self.total_steps - self.warmup_steps

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start_lr": self.warmup_start_lr,
        }


@keras.saving.register_keras_serializable(package="tfmagic")
class CosinePowerAnnealing(WarmupSchedule):
    """Cycles of cosine power annealing after a linear warm-up.

    The steps after the warm-up are split into `cycles` equal cycles; cycle k (from 0)
    starts at `peak_lr * cycle_decay**k`. Inside a cycle, with progress t in [0, 1] and
    c = (1 + cos(pi t)) / 2:

        lr = min_lr + (peak_k - min_lr) * (P**c - 1) / (P - 1),    P = power

    P = 1 is plain cosine annealing (the limit, computed exactly); as P grows the curve
    drops faster at the start of a cycle and approaches exponential decay. From
    `total_steps` on, lr = min_lr. This is the per-step form of sharpDARTS' cosine power
    annealing (Hundt et al., 2019) with repeated cycles of decaying amplitude.

    Args:
        peak_lr: the learning rate at the end of the warm-up (the first cycle's peak).
        total_steps: steps of the whole schedule, warm-up included.
        power: P > 0; 2 or 4 are the usual choices.
        cycles: number of cycles (>= 1).
        cycle_decay: factor of each cycle's peak over the previous one, in (0, 1].
        warmup_steps: steps of linear warm-up, < total_steps.
        warmup_start_lr: the learning rate at step 0.
        min_lr: the floor that every cycle ends at, <= peak_lr.

    Example:

    >>> schedule = CosinePowerAnnealing(0.1, 100, power=4.0)
    >>> round(float(schedule(50)), 4)   # (4**0.5 - 1) / 3 of the peak
    0.0333
    """

    def __init__(self, peak_lr, total_steps, power=2.0, cycles=1, cycle_decay=1.0,
                 warmup_steps=0, warmup_start_lr=0.0, min_lr=0.0):
        super().__init__(peak_lr, total_steps, warmup_steps, warmup_start_lr)
        check(is_number(power) and power > 0, "power", power, "must be a number > 0")
        check(isinstance(cycles, int) and not isinstance(cycles, bool)
              and 1 <= cycles <= self.decay_steps, "cycles", cycles,
              f"must be an integer in [1, total_steps - warmup_steps = {self.decay_steps}]")
        check(is_number(cycle_decay) and 0 < cycle_decay <= 1, "cycle_decay", cycle_decay,
              "must be in (0, 1]")
        check(is_number(min_lr) and 0 <= min_lr <= peak_lr, "min_lr", min_lr,
              f"must be in [0, peak_lr={peak_lr}]")
        self.power = float(power)
        self.cycles = cycles
        self.cycle_decay = float(cycle_decay)
        self.min_lr = float(min_lr)
        # ln P from log1p(P - 1) keeps full precision for P close to 1.
        self._log_power = math.log1p(self.power - 1.0)

    @property
    def cycle_steps(self) -> float:
        """Length of one cycle, in steps."""
        return self.decay_steps / self.cycles

    def _cycle_and_progress(self, steps):
        cycle = ops.minimum(ops.floor(steps / self.cycle_steps), self.cycles - 1)
        progress = ops.clip((steps - cycle * self.cycle_steps) / self.cycle_steps, 0.0, 1.0)
        return cycle, progress

    def _decay(self, steps, dtype):
        cycle, progress = self._cycle_and_progress(steps)
        c = (1.0 + ops.cos(math.pi * progress)) / 2.0
        if self._log_power == 0.0:
            shape = c
        else:
            shape = ops.expm1(c * self._log_power) / math.expm1(self._log_power)
        peak = self.peak_lr * ops.power(ops.cast(self.cycle_decay, dtype), cycle)
        return ops.cast(self.min_lr + (peak - self.min_lr) * shape, dtype)

    @property
    def cycle_count(self) -> int:
        """Number of LR cycles."""
        return self.cycles

    def cycle_index(self, step):
        steps = ops.maximum(_float_step(step) - self.warmup_steps, 0.0)
        return self._cycle_and_progress(steps)[0]

    def get_config(self):
        return {
            **super().get_config(),
            "power": self.power,
            "cycles": self.cycles,
            "cycle_decay": self.cycle_decay,
            "min_lr": self.min_lr,
        }


@keras.saving.register_keras_serializable(package="tfmagic")
class CosineAnnealing(CosinePowerAnnealing):
    """Plain cosine annealing: `CosinePowerAnnealing` with power 1.

    With one cycle it equals `keras.optimizers.schedules.CosineDecay(warmup_start_lr,
    total_steps - warmup_steps, alpha=min_lr / peak_lr, warmup_target=peak_lr,
    warmup_steps=warmup_steps)`.

    >>> round(float(CosineAnnealing(0.1, 100)(50)), 4)
    0.05
    """

    def __init__(self, peak_lr, total_steps, cycles=1, cycle_decay=1.0, warmup_steps=0,
                 warmup_start_lr=0.0, min_lr=0.0):
        super().__init__(peak_lr, total_steps, power=1.0, cycles=cycles,
                         cycle_decay=cycle_decay, warmup_steps=warmup_steps,
                         warmup_start_lr=warmup_start_lr, min_lr=min_lr)

    def get_config(self):
        config = super().get_config()
        del config["power"]
        return config


@keras.saving.register_keras_serializable(package="tfmagic")
class GammaDecay(WarmupSchedule):
    """Step decay: the peak learning rate times `gamma` at each milestone.

    `milestones` are fractions of `total_steps`, counted from step 0 (warm-up included):
    from step `round(m * total_steps)` on, the rate is multiplied by `gamma` once more.
    The classic CIFAR ResNet regime is `gamma=0.1, milestones=(0.5, 0.75)`.

    >>> schedule = GammaDecay(0.1, 100)
    >>> [round(float(schedule(s)), 4) for s in (0, 49, 50, 75, 99)]
    [0.1, 0.1, 0.01, 0.001, 0.001]
    """

    def __init__(self, peak_lr, total_steps, gamma=0.1, milestones=(0.5, 0.75),
                 warmup_steps=0, warmup_start_lr=0.0):
        super().__init__(peak_lr, total_steps, warmup_steps, warmup_start_lr)
        check(is_number(gamma) and 0 < gamma <= 1, "gamma", gamma, "must be in (0, 1]")
        milestones = tuple(milestones)
        steps = [round(m * total_steps) for m in milestones if is_number(m)]
        check(
            len(steps) == len(milestones) and all(0 < m < 1 for m in milestones)
            and list(milestones) == sorted(set(milestones))
            and all(s > warmup_steps for s in steps),
            "milestones", milestones,
            f"must be increasing fractions in (0, 1) whose steps lie after the warm-up "
            f"(warmup_steps={warmup_steps})",
        )
        self.gamma = float(gamma)
        self.milestones = tuple(float(m) for m in milestones)
        self.milestone_steps = tuple(steps)

    @property
    def cycle_count(self) -> int:
        """The spans between milestones count as cycles: one more than the milestones."""
        return len(self.milestone_steps) + 1

    def cycle_index(self, step):
        step = _float_step(step)
        passed = ops.zeros_like(step)
        for milestone in self.milestone_steps:
            passed = passed + ops.cast(step >= milestone, step.dtype)
        return passed

    def _decay(self, steps, dtype):
        passed = self.cycle_index(steps + self.warmup_steps)
        return ops.cast(self.peak_lr * ops.power(ops.cast(self.gamma, dtype), passed), dtype)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "milestones": self.milestones}


@keras.saving.register_keras_serializable(package="tfmagic")
class RegularizationSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A regularization coefficient (weight decay, say) that changes with the step.

    Policies:

    - `constant`: `base` at every step.
    - `linear`: from `base` at step 0 to `end` at `total_steps` (taken from `lr_schedule`
      when not given), then `end`.
    - `cycles`: steps up at the start of each LR cycle of `lr_schedule`: `base * factor**k`
      in cycle k (from 0; the warm-up belongs to cycle 0). For a `GammaDecay` the "cycles"
      are the spans between milestones. When `factor` is None it is chosen so that the last
      cycle reaches `end`: `factor = (end / base) ** (1 / (cycles - 1))`.
    - `lr`: proportional to the learning rate: `base * lr(step) / peak_lr`, so it equals
      `base` at the LR peak and follows warm-up, cycles and decay.

    Example:

    >>> lr = CosinePowerAnnealing(0.1, 300, cycles=3)
    >>> wd = RegularizationSchedule(1e-4, "cycles", lr_schedule=lr, factor=2.0)
    >>> [round(float(wd(s)) * 1e4, 2) for s in (0, 100, 200)]
    [1.0, 2.0, 4.0]
    """

    def __init__(self, base, policy="constant", end=None, lr_schedule=None, total_steps=None,
                 factor=None):
        if isinstance(lr_schedule, dict):
            lr_schedule = keras.saving.deserialize_keras_object(lr_schedule)
        check(is_number(base) and base >= 0, "base", base, "must be a number >= 0")
        check(policy in REGULARIZATION_POLICIES, "policy", policy,
              f"must be one of {', '.join(REGULARIZATION_POLICIES)}")
        check(end is None or (is_number(end) and end >= 0), "end", end,
              "must be None or a number >= 0")
        check(factor is None or (is_number(factor) and factor > 0), "factor", factor,
              "must be None or a number > 0")
        if policy in ("cycles", "lr"):
            check(all(hasattr(lr_schedule, a) for a in ("cycle_count", "cycle_index", "peak_lr")),
                  "lr_schedule", lr_schedule,
                  f"policy {policy!r} needs an LR schedule that states its peak_lr and its "
                  "cycles (cycle_count, cycle_index), such as CosinePowerAnnealing, "
                  "CosineAnnealing or GammaDecay")
        if policy == "linear":
            if total_steps is None and lr_schedule is not None:
                total_steps = lr_schedule.total_steps
            check(end is not None, "end", end, "policy 'linear' needs the final value end")
            check(isinstance(total_steps, int) and total_steps >= 1, "total_steps",
                  total_steps, "policy 'linear' needs total_steps >= 1 (or an lr_schedule)")
        if policy == "cycles":
            cycles = lr_schedule.cycle_count
            check(factor is not None or end is not None, "factor", factor,
                  "policy 'cycles' needs factor or end")
            if factor is None:
                check(base > 0 or end == 0, "base", base,
                      "must be > 0 to step up to end with policy 'cycles'")
                factor = (end / base) ** (1 / (cycles - 1)) if cycles > 1 and base > 0 else 1.0
        self.base = float(base)
        self.policy = policy
        self.end = None if end is None else float(end)
        self.lr_schedule = lr_schedule
        self.total_steps = total_steps
        self.factor = None if factor is None else float(factor)

    def __call__(self, step):
        step = _float_step(step)
        return ops.cast(REGULARIZATION_POLICIES.build(self.policy, self, step), step.dtype)

    def get_config(self):
        return {
            "base": self.base,
            "policy": self.policy,
            "end": self.end,
            "lr_schedule": None if self.lr_schedule is None
            else keras.saving.serialize_keras_object(self.lr_schedule),
            "total_steps": self.total_steps,
            "factor": self.factor,
        }


@REGULARIZATION_POLICIES.register("constant", help="the same value at every step")
def _constant(schedule: RegularizationSchedule, step):
    return ops.zeros_like(step) + schedule.base


@REGULARIZATION_POLICIES.register(
    "linear", help="from the base value to the end value, linearly over training")
def _linear(schedule: RegularizationSchedule, step):
    fraction = ops.clip(step / schedule.total_steps, 0.0, 1.0)
    return schedule.base + (schedule.end - schedule.base) * fraction


@REGULARIZATION_POLICIES.register(
    "cycles", help="steps up at each LR cycle, reaching the end value in the last")
def _cycles(schedule: RegularizationSchedule, step):
    factor = ops.cast(schedule.factor, step.dtype)
    return schedule.base * ops.power(factor, schedule.lr_schedule.cycle_index(step))


@REGULARIZATION_POLICIES.register("lr", help="proportional to the learning rate")
def _proportional_to_lr(schedule: RegularizationSchedule, step):
    return schedule.base * schedule.lr_schedule(step) / schedule.lr_schedule.peak_lr
