"""The checklist's trials: each one changes a few fields of the baseline recipe.

The 15 trials of the article's checklist (``TRIAL_NAMES``), each compared with the baseline
(by default the Recipe defaults, the recommended training scheme)::

    lr_gamma            lr_schedule=gamma                step decay x0.1 at 50% and 75%
    lr_cosine           lr_schedule=cosine               plain cosine annealing
    opt_sgd_momentum    optimizer=sgd                    SGD with classical momentum
    opt_adam            optimizer=adam, lr=lr/100        Adam at its usual scale (0.001 for 0.1)
    pretrained          pretrained flipped               none <-> imagenet (keras:NAME models)
    aug_color           augment=color                    colour augmentation, no AutoAugment
    wd_higher           weight_decay x4                  (weight_decay_end x4 too when set)
    wd_lower            weight_decay /4                  (weight_decay_end /4 too when set)
    ls_0                label_smoothing=0
    ls_0.2              label_smoothing=0.2
    wd_linear           weight_decay_schedule=linear     rising to weight_decay_end (2x)
    mixup               mixup_alpha 0 <-> 0.2            mixup on (off if the baseline has it)
    se_off              se=False                         no squeeze-and-excitation
    act_relu            downscale_activation=relu
    act_swish           downscale_activation=swish

``extended=True`` adds the tricks the article leaves for later (``EXTENDED_TRIAL_NAMES``)::

    bs_half             batch_size /2, lr /2             linear LR scaling with the batch
    bs_double           batch_size x2, lr x2
    aux_loss            aux_loss_weight=0.4              auxiliary classifier, training only
    crop_rrc            crop_scheme=random_resized_crop
    drop_path           drop_path_rate=0.1               built-in backbones only
    cutout              cutout=0.5                       a square of half the image side erased
    attention_pool      pooling=attention
    wd_cycles           weight_decay_schedule=cycles     steps up at each LR cycle
    wd_lr               weight_decay_schedule=lr         proportional to the learning rate

A trial whose change is impossible for the baseline (pretrained weights for a built-in
backbone, ``se_off`` when the baseline has no SE, a value the baseline already has, a change
the Recipe refuses, such as ``lr_gamma`` with a warm-up past half of training) is returned as
a :class:`SkippedTrial` with the reason, never silently dropped. Every trial's recipe is
validated here, before anything runs (:func:`check_trial`). Custom trials are :class:`Trial`
objects made by the caller.

Example:
    >>> from tfmagic.recipe import Recipe
    >>> trials, skipped = checklist_trials(Recipe())
    >>> [t.name for t in trials][:3], [s.name for s in skipped]
    (['lr_gamma', 'lr_cosine', 'opt_sgd_momentum'], ['pretrained'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tfmagic import models
from tfmagic._checks import check
from tfmagic.recipe import Recipe, RecipeError
from tfmagic.registry import Registry

BASELINE = "baseline"
WEIGHT_DECAY_FACTOR = 4.0
ADAM_LR_FACTOR = 0.01
MIXUP_ALPHA = 0.2


@dataclasses.dataclass(frozen=True)
class Trial:
    """One configuration of the checklist: the baseline with ``change`` applied.

    Attributes:
        name: the trial's name, also its directory name (letters, digits, ``._-``).
        group: trials of one group answer one question (``lr``, ``optimizer``, ...); the
            report's best.cfg takes at most one winner per group.
        description: what the trial changes, in words.
        change: Recipe field -> value; empty for the baseline.
    """

    name: str
    group: str
    description: str
    change: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not self.name or not set(self.name) <= allowed or self.name.startswith("."):
            raise ValueError(f"name={self.name!r} is not allowed: letters, digits and ._- "
                             "(not starting with a dot)")
        unknown = sorted(set(self.change) - {f.name for f in dataclasses.fields(Recipe)})
        if unknown:
            raise ValueError(f"change={dict(self.change)!r} is not allowed: {unknown} are not "
                             "Recipe fields")

    def recipe(self, baseline: Recipe) -> Recipe:
        """The baseline with this trial's change (validated like any Recipe)."""
        return dataclasses.replace(baseline, **self.change)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "description": self.description,
                "change": dict(self.change)}


@dataclasses.dataclass(frozen=True)
class SkippedTrial:
    """A trial that cannot be made from this baseline, and why."""

    name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


def check_trial(trial: Trial, baseline: Recipe) -> SkippedTrial | None:
    """None when ``trial`` makes a valid recipe from ``baseline``, else the trial as skipped,
    with the Recipe's reason."""
    try:
        trial.recipe(baseline)
    except RecipeError as error:
        change = ", ".join(f"{field}={value}" for field, value in trial.change.items())
        return SkippedTrial(trial.name, f"the change {change} does not fit this baseline: "
                                        f"{error}")
    return None


def baseline_trial() -> Trial:
    """The baseline itself: the recipe as given."""
    return Trial(BASELINE, BASELINE, "the recipe as given")


class SkipTrial(Exception):
    """Raised by a trial's maker when the trial cannot be made from this baseline; the
    message is the reason the report gives."""


def choose(field: str, value: Any, group: str, description: str | None = None) -> Callable:
    """The maker of a trial that sets one Recipe field: ``field=value``.

    Args:
        field: the Recipe field.
        value: its value in the trial; the trial is skipped for a baseline that has it.
        group: the question the trial answers (best.cfg takes one winner per group).
        description: the trial in words; by default, for a field with a registry of choices
            (`tfmagic.registry.Registry`), the help of the chosen entry.
    """
    if description is None:
        registry = next((f.metadata["choices"] for f in dataclasses.fields(Recipe)
                         if f.name == field), None)
        check(isinstance(registry, Registry), "description", description,
              f"needed for field {field!r}, which has no registry of choices to describe it")
        description = registry.choice(value).help

    def make(baseline: Recipe) -> tuple[str, str, dict[str, Any]]:
        if getattr(baseline, field) == value:
            raise SkipTrial(f"the baseline already has {field}={value}")
        return group, description, {field: value}

    return make


def _opt_adam(baseline: Recipe):
    if baseline.optimizer == "adam":
        raise SkipTrial("the baseline already has optimizer=adam")
    lr = baseline.lr * ADAM_LR_FACTOR
    return "optimizer", f"Adam at lr/100 ({lr:g})", {"optimizer": "adam", "lr": lr,
                                                      **_min_lr_below(baseline, lr)}


def _min_lr_below(baseline: Recipe, lr: float) -> dict[str, float]:
    """The min_lr change that a lower peak LR needs, if any (min_lr <= lr)."""
    return {"min_lr": lr} if baseline.min_lr > lr else {}


def _pretrained(baseline: Recipe):
    if not models.is_application(baseline.model):
        raise SkipTrial(f"the built-in backbone {baseline.model} has no pretrained weights; "
                    "choose a keras.applications backbone (model=keras:NAME) to try pretraining")
    if baseline.pretrained == "none":
        return "pretrained", "ImageNet weights instead of random initialization", {
            "pretrained": "imagenet"}
    return "pretrained", f"random initialization instead of {baseline.pretrained}", {
        "pretrained": "none"}


def _weight_decay(factor: float, words: str):
    def make(baseline: Recipe):
        if baseline.weight_decay == 0:
            raise SkipTrial("the baseline has weight_decay=0")
        change = {"weight_decay": baseline.weight_decay * factor}
        if baseline.weight_decay_end:
            change["weight_decay_end"] = baseline.weight_decay_end * factor
        return "weight_decay", f"weight decay {words} ({change['weight_decay']:g})", change

    return make


def _mixup(baseline: Recipe):
    if baseline.mixup_alpha > 0:
        return "mixup", "mixup off", {"mixup_alpha": 0.0}
    return "mixup", f"mixup on (alpha {MIXUP_ALPHA})", {"mixup_alpha": MIXUP_ALPHA}


def _se_off(baseline: Recipe):
    if not baseline.se:
        raise SkipTrial("the baseline has no squeeze-and-excitation (se=False)")
    return "se", "no squeeze-and-excitation blocks", {"se": False}


def _batch(factor: float, words: str):
    def make(baseline: Recipe):
        batch = int(baseline.batch_size * factor)
        if batch < 1:
            raise SkipTrial(f"batch_size {baseline.batch_size} cannot be halved")
        lr = baseline.lr * batch / baseline.batch_size
        return "batch_size", f"batch size {words} ({batch}), lr scaled linearly ({lr:g})", {
            "batch_size": batch, "lr": lr, **_min_lr_below(baseline, lr)}

    return make


def _drop_path(baseline: Recipe):
    if models.is_application(baseline.model):
        raise SkipTrial(f"drop path is available for the built-in backbones, not {baseline.model}")
    return choose("drop_path_rate", 0.1, "drop_path", "drop path (stochastic depth) 0.1")(baseline)


TRIALS = Registry("trials")
"""The article's checklist: name -> ``make(baseline)``, which returns ``(group, description,
change)`` or raises `SkipTrial`; its help is the trial in a few words."""
EXTENDED_TRIALS = Registry("trials")
"""The tricks the article leaves for later (``extended=True``), made like `TRIALS`."""
TRIAL_NAMES = TRIALS
EXTENDED_TRIAL_NAMES = EXTENDED_TRIALS

TRIALS.register("lr_gamma", choose("lr_schedule", "gamma", "lr"), help="gamma (step) decay")
TRIALS.register("lr_cosine", choose("lr_schedule", "cosine", "lr"), help="plain cosine")
TRIALS.register("opt_sgd_momentum", choose("optimizer", "sgd", "optimizer"),
                help="SGD with classical momentum")
TRIALS.register("opt_adam", _opt_adam, help="Adam at lr/100")
TRIALS.register("pretrained", _pretrained, help="ImageNet weights on <-> off (keras:NAME models)")
TRIALS.register("aug_color", choose("augment", "color", "augment"),
                help="colour augmentation instead of AutoAugment")
TRIALS.register("wd_higher", _weight_decay(WEIGHT_DECAY_FACTOR, "x4"), help="weight decay x4")
TRIALS.register("wd_lower", _weight_decay(1 / WEIGHT_DECAY_FACTOR, "/4"), help="weight decay /4")
TRIALS.register("ls_0", choose("label_smoothing", 0.0, "label_smoothing", "no label smoothing"),
                help="no label smoothing")
TRIALS.register("ls_0.2", choose("label_smoothing", 0.2, "label_smoothing",
                                 "label smoothing 0.2"), help="label smoothing 0.2")
TRIALS.register("wd_linear", choose("weight_decay_schedule", "linear", "weight_decay_schedule"),
                help="weight decay rising linearly")
TRIALS.register("mixup", _mixup, help="mixup on <-> off")
TRIALS.register("se_off", _se_off, help="no squeeze-and-excitation")
TRIALS.register("act_relu", choose("downscale_activation", "relu", "downscale_activation",
                                   "ReLU after the stride-2 layers"),
                help="ReLU downscaling")
TRIALS.register("act_swish", choose("downscale_activation", "swish", "downscale_activation",
                                    "Swish after the stride-2 layers"),
                help="Swish downscaling")

EXTENDED_TRIALS.register("bs_half", _batch(0.5, "halved"), help="batch size /2")
EXTENDED_TRIALS.register("bs_double", _batch(2.0, "doubled"), help="batch size x2")
EXTENDED_TRIALS.register("aux_loss", choose("aux_loss_weight", 0.4, "aux_loss",
                                            "auxiliary classifier, loss weight 0.4"),
                         help="auxiliary loss")
EXTENDED_TRIALS.register("crop_rrc", choose("crop_scheme", "random_resized_crop", "crop"),
                         help="random resized crops")
EXTENDED_TRIALS.register("drop_path", _drop_path, help="drop path")
EXTENDED_TRIALS.register("cutout", choose("cutout", 0.5, "cutout",
                                          "Cutout of half the image side"), help="Cutout")
EXTENDED_TRIALS.register("attention_pool", choose("pooling", "attention", "pooling",
                                                  "attention pooling instead of average"),
                         help="attention pooling")
EXTENDED_TRIALS.register("wd_cycles", choose("weight_decay_schedule", "cycles",
                                             "weight_decay_schedule"),
                         help="weight decay stepping up per LR cycle")
EXTENDED_TRIALS.register("wd_lr", choose("weight_decay_schedule", "lr", "weight_decay_schedule"),
                         help="weight decay proportional to the LR")


def checklist_trials(
    baseline: Recipe,
    *,
    extended: bool = False,
    names: Iterable[str] | None = None,
) -> tuple[list[Trial], list[SkippedTrial]]:
    """The trials of the checklist for ``baseline`` (the baseline itself not included).

    Args:
        baseline: the recipe every trial changes.
        extended: add ``EXTENDED_TRIAL_NAMES`` to the article's 15.
        names: only these trials (any of ``TRIAL_NAMES`` and ``EXTENDED_TRIAL_NAMES``), in
            the checklist's order; None for all.

    Returns:
        ``(trials, skipped)``: the trials that can run, and those that cannot with a reason.

    Raises:
        ValueError: an unknown trial name, naming the allowed ones.
    """
    known = (*TRIALS, *EXTENDED_TRIALS)
    if names is None:
        chosen = (*TRIALS, *(EXTENDED_TRIALS if extended else ()))
    else:
        wanted = list(names)
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ValueError(f"trials={','.join(unknown)} is not allowed: trial names are "
                             f"{', '.join(known)}")
        chosen = tuple(name for name in known if name in wanted)
    trials, skipped = [], []
    for name in chosen:
        try:
            registry = TRIALS if name in TRIALS else EXTENDED_TRIALS
            group, description, change = registry.build(name, baseline)
        except SkipTrial as reason:
            skipped.append(SkippedTrial(name, str(reason)))
            continue
        trial = Trial(name, group, description, change)
        problem = check_trial(trial, baseline)
        if problem is None:
            trials.append(trial)
        else:
            skipped.append(problem)
    return trials, skipped
