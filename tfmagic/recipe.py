"""One training configuration: every knob of a run, with the recommended default.

`Recipe` is the single source of truth for configuration. The absl flags of the
`tfmagic-train` binary are generated from its fields (name, type, help, allowed values),
flagfiles are written from it, and a checklist trial is
`dataclasses.replace(baseline, **change)`.

Every field is validated when a Recipe is made, so a bad value fails at once with a
message that names the field, the value and what is allowed, before any data is read
or any output directory is created. Float fields must be finite (inf and nan are refused),
and fields that depend on each other are checked together (warm-up shorter than training,
and with `lr_schedule="gamma"` shorter than its first decay at half of training):

>>> Recipe(lr=-1.0)
Traceback (most recent call last):
...
tfmagic.recipe.RecipeError: lr=-1.0 is not allowed: must be > 0
"""

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

from absl import flags

from tfmagic import data, distribute, losses, models, optimizers, schedules
from tfmagic._atomic import write_atomic
from tfmagic.choices import AUGMENTS, CROP_SCHEMES, LR_SCHEDULES
from tfmagic.registry import Registry

__all__ = ["AUGMENTS", "CROP_SCHEMES", "LR_SCHEDULES", "FlagfileError", "Recipe", "RecipeError",
           "define_flags", "fields", "from_flags"]


class RecipeError(ValueError):
    """A Recipe field holds a value that is not allowed."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: {allowed}")


class FlagfileError(ValueError):
    """A flagfile holds a line that is not a Recipe flag, or a value that does not parse."""


def _knob(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | Registry | None = None,
    check: Callable[[Any], bool] | None = None,
    allowed: str = "",
) -> Any:
    """A Recipe field with the metadata that flags and validation are made from.

    `choices` is read when it is used, so a name registered later in a `Registry` is
    allowed, and offered by flags defined after it.
    """
    return dataclasses.field(
        default=default,
        metadata={"help": help, "choices": choices, "check": check, "allowed": allowed},
    )


def _check_dataset(value: str) -> bool:
    data.check_dataset_name(value)
    return True


def _check_model(value: str) -> bool:
    if models.is_application(value):
        return value[len(models.KERAS_PREFIX):] in models.APPLICATION_NAMES
    return value in models.MODEL_NAMES


def _check_pretrained(value: str) -> bool:
    try:
        models.check_pretrained(value)
    except ValueError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every knob of one training run; the defaults are the recommended baseline.

    Zero means "automatic" for `train_subset` (all images), `image_size` (the dataset's
    own size) and `num_classes` (inferred from the data).

    Example:

    >>> quick = Recipe(train_subset=2000, epochs=2, output_dir="runs/quick")
    >>> dataclasses.replace(quick, lr=0.05).lr
    0.05
    """

    dataset: str = _knob(
        "fashion_mnist",
        "Dataset: 'fashion_mnist', 'folder:PATH' (one sub-folder per class), 'tfds:NAME' or "
        "'tfrecord:GLOB' (TFRecord shards with image/encoded and image/class/label, names "
        "starting train and test or validation; tfmagic-data writes them from a folder).",
        check=_check_dataset,
        allowed="'fashion_mnist', 'folder:PATH' with an existing PATH, 'tfds:NAME' or "
                "'tfrecord:GLOB'",
    )
    train_subset: int = _knob(
        0,
        "Train on this many images (stratified, deterministic per seed); 0 = all.",
        check=lambda v: v >= 0,
        allowed="must be >= 0 (0 = all images)",
    )
    cache: str = _knob(
        "auto",
        "Where the images of a folder: or tfds: dataset live: memory (decoded once at "
        "image_size), none (streamed: read and decoded from their files in every epoch, memory "
        "flat as the dataset grows, random-resized crops cut from the original image), or "
        "auto: memory when the decoded images fit in 2 GiB, else streamed. tfrecord: datasets "
        "and tfds: datasets of images of varying size are always streamed.",
        choices=data.CACHE_MODES,
    )
    label_base: int = _knob(
        0,
        "First label of a tfrecord: dataset, subtracted from every label: 1 for shards whose "
        "labels run from 1 (the ImageNet shards of the Inception scripts).",
        check=lambda v: v >= 0,
        allowed="must be >= 0",
    )
    validation_fraction: float = _knob(
        0.1,
        "Fraction of the training images held out (stratified) for validation.",
        check=lambda v: 0.0 <= v < 1.0,
        allowed="must be in [0, 1)",
    )
    image_size: int = _knob(
        0,
        "Resize images to this many pixels per side; 0 = the dataset's own size.",
        check=lambda v: v == 0 or v >= 28,
        allowed="must be 0 (native size) or >= 28",
    )
    batch_size: int = _knob(
        128, "Global training batch size.", check=lambda v: v >= 1, allowed="must be >= 1"
    )
    eval_batch_size: int = _knob(
        0, "Batch size of the validation and test evaluations; 0: batch_size. A larger one "
        "evaluates faster (inference keeps no activations for a backward pass) and gives the "
        "same accuracy.", check=lambda v: v >= 0, allowed="must be >= 0"
    )
    epochs: int = _knob(
        30, "Number of training epochs.", check=lambda v: v >= 1, allowed="must be >= 1"
    )
    model: str = _knob(
        "resnet20",
        "Backbone: a built-in one, or 'keras:NAME' for keras.applications.NAME with a new head "
        "(keras:MobileNetV2, keras:ResNet50, keras:EfficientNetB0, ...).",
        check=_check_model,
        allowed=f"must be one of {', '.join(models.MODEL_NAMES)}, or 'keras:NAME' with NAME a "
        "keras.applications model (keras:MobileNetV2, keras:ResNet50, ...)",
    )
    width: float = _knob(
        1.0,
        "Width multiplier of the backbone's channel counts.",
        check=lambda v: 0.0 < v <= 8.0,
        allowed="must be in (0, 8]",
    )
    downscale_activation: str = _knob(
        "leaky_relu",
        "Activation after the stride-2 downscaling layers (stem and stage transitions); "
        "'keep' leaves a keras.applications model's own.",
        choices=(*models.DOWNSCALE_ACTIVATIONS, models.KEEP_ACTIVATION),
    )
    se: bool = _knob(
        True,
        "Squeeze-and-excitation blocks: in each residual block of a built-in backbone, "
        "inserted by surgery into a keras.applications one.",
    )
    drop_path_rate: float = _knob(
        0.0,
        "Stochastic depth of the last residual block (built-in backbones), rising linearly "
        "from the first; 0 = off.",
        check=lambda v: 0.0 <= v < 1.0,
        allowed="must be in [0, 1) (0 = off)",
    )
    pooling: str = _knob(
        "avg",
        "Pooling before the classifier.",
        choices=models.POOLINGS,
    )
    aux_loss_weight: float = _knob(
        0.0,
        "Weight of the auxiliary classifier's loss (a head on the last feature map before the "
        "final downscaling, training only); 0 = off.",
        check=lambda v: v >= 0,
        allowed="must be >= 0 (0 = off)",
    )
    pretrained: str = _knob(
        "none",
        "Initial weights of a keras.applications backbone: 'none', 'imagenet' (downloaded by "
        "Keras, needs internet) or the path of a weights file.",
        check=_check_pretrained,
        allowed="must be 'none', 'imagenet' or the path of an existing weights file",
    )
    num_classes: int = _knob(
        0,
        "Number of classes; 0 = inferred from the data.",
        check=lambda v: v == 0 or v >= 2,
        allowed="must be 0 (infer) or >= 2",
    )
    lr_schedule: str = _knob(
        "cosine_power_cycles",
        "Learning-rate regime after the warm-up.",
        choices=LR_SCHEDULES,
    )
    lr: float = _knob(
        0.1, "Peak learning rate (for the global batch).", check=lambda v: v > 0,
        allowed="must be > 0",
    )
    lr_power: float = _knob(
        2.0,
        "Power P of cosine power annealing (1 = plain cosine; larger drops faster).",
        check=lambda v: v > 0,
        allowed="must be > 0",
    )
    lr_cycles: int = _knob(
        2,
        "Number of LR cycles of cosine_power_cycles (cosine and gamma have one).",
        check=lambda v: v >= 1,
        allowed="must be >= 1",
    )
    lr_cycle_decay: float = _knob(
        0.5,
        "Each LR cycle's peak as a fraction of the previous one's.",
        check=lambda v: 0.0 < v <= 1.0,
        allowed="must be in (0, 1]",
    )
    warmup_epochs: float = _knob(
        0.3,
        "Epochs of linear LR warm-up from 0 to lr (fractions allowed).",
        check=lambda v: v >= 0,
        allowed="must be >= 0 and < epochs",
    )
    min_lr: float = _knob(
        0.0, "Floor that every LR cycle decays to.", check=lambda v: v >= 0,
        allowed="must be >= 0 and <= lr",
    )
    optimizer: str = _knob(
        "sgd_nesterov", "Optimizer.", choices=optimizers.OPTIMIZERS
    )
    momentum: float = _knob(
        0.9,
        "Momentum of SGD (sgd_nesterov, sgd).",
        check=lambda v: 0.0 <= v < 1.0,
        allowed="must be in [0, 1)",
    )
    weight_decay: float = _knob(
        5e-4,
        "Weight decay coefficient (biases and normalization parameters excluded).",
        check=lambda v: v >= 0,
        allowed="must be >= 0",
    )
    weight_decay_mode: str = _knob(
        "l2",
        "l2: wd * w added to the gradient (PyTorch SGD convention); decoupled: "
        "w -= lr * wd * w (AdamW convention).",
        choices=optimizers.DECAY_MODES,
    )
    weight_decay_schedule: str = _knob(
        "constant",
        "Weight decay over training, from weight_decay (to weight_decay_end for linear and "
        "cycles).",
        choices=schedules.REGULARIZATION_POLICIES,
    )
    weight_decay_end: float = _knob(
        0.0,
        "Final weight decay of the linear and cycles schedules; 0 = 2 x weight_decay.",
        check=lambda v: v >= 0,
        allowed="must be >= 0",
    )
    label_smoothing: float = _knob(
        0.1, "Label smoothing epsilon.", check=lambda v: 0.0 <= v < 1.0,
        allowed="must be in [0, 1)",
    )
    label_smoothing_convention: str = _knob(
        "article",
        "article: true class 1-eps, every other eps/(K-1); keras: (1-eps)*y + eps/K.",
        choices=losses.CONVENTIONS,
    )
    augment: str = _knob(
        "autoaugment",
        "Training augmentation policy, applied after the crop scheme, to training batches "
        "only.",
        choices=AUGMENTS,
    )
    crop_scheme: str = _knob(
        "pad_and_crop",
        "Crop and flip of every training image.",
        choices=CROP_SCHEMES,
    )
    crop_fraction: float = _knob(
        1.0,
        "Evaluation crop factor: validation and test images are the central crop_fraction of "
        "the image resized back to full size (1 = the whole image).",
        check=lambda v: 0.0 < v <= 1.0,
        allowed="must be in (0, 1]",
    )
    cutout: float = _knob(
        0.0,
        "Cutout: side of the erased square as a fraction of the image side; 0 = off.",
        check=lambda v: 0.0 <= v <= 1.0,
        allowed="must be in [0, 1] (0 = off)",
    )
    mixup_alpha: float = _knob(
        0.0,
        "Mixup: alpha of the Beta(alpha, alpha) mixing weight; 0 = off.",
        check=lambda v: v >= 0,
        allowed="must be >= 0 (0 = off)",
    )
    cutmix_alpha: float = _knob(
        0.0,
        "CutMix: alpha of the Beta(alpha, alpha) area weight; 0 = off. With mixup also on, "
        "each batch uses one of the two, chosen with probability 1/2.",
        check=lambda v: v >= 0,
        allowed="must be >= 0 (0 = off)",
    )
    strategy: str = _knob(
        "auto",
        "tf.distribute strategy: auto (MirroredStrategy on more than one GPU, else default), "
        "default, mirrored, multi_worker (configured by TF_CONFIG) or tpu.",
        choices=distribute.STRATEGIES,
    )
    lr_scaling: str = _knob(
        "none",
        "linear: multiply lr and min_lr by batch_size / 128 (the batch size the default lr is "
        "given for); none: use lr as given.",
        choices=distribute.LR_SCALINGS,
    )
    precision: str = _knob(
        "float32",
        "Keras dtype policy: float32, mixed_float16 (GPU, with loss scaling) or "
        "mixed_bfloat16 (TPU, recent CPUs and GPUs); losses and logits stay float32.",
        choices=distribute.PRECISIONS,
    )
    jit_compile: bool = _knob(False, "Compile the train step with XLA.")
    steps_per_execution: int = _knob(
        1,
        "Train steps run per call into the compiled function (fewer Python round trips).",
        check=lambda v: v >= 1,
        allowed="must be >= 1",
    )
    seed: int = _knob(
        0, "Seed of data order, splits and initialization.", check=lambda v: v >= 0,
        allowed="must be >= 0",
    )
    output_dir: str = _knob(
        "runs/default",
        "Directory that receives result.json, history.csv, model.keras and recipe.cfg.",
        check=lambda v: bool(v.strip()),
        allowed="must be a non-empty path",
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            value = _coerce(field, value)
            object.__setattr__(self, field.name, value)
            meta = field.metadata
            if meta["choices"] is not None and value not in meta["choices"]:
                raise RecipeError(field.name, value, f"must be one of {', '.join(meta['choices'])}")
            if meta["check"] is not None:
                try:
                    ok = meta["check"](value)
                except data.DataError as error:
                    raise RecipeError(field.name, value, str(error)) from None
                if not ok:
                    raise RecipeError(field.name, value, meta["allowed"])
        if self.warmup_epochs >= self.epochs:
            raise RecipeError("warmup_epochs", self.warmup_epochs,
                              f"must be < epochs ({self.epochs})")
        if self.lr_schedule == "gamma" and self.warmup_epochs >= self.epochs / 2:
            raise RecipeError("warmup_epochs", self.warmup_epochs,
                              f"must be < epochs / 2 ({self.epochs / 2:g}) with lr_schedule=gamma "
                              "(its first step decay is at half of training)")
        if self.min_lr > self.lr:
            raise RecipeError("min_lr", self.min_lr, f"must be <= lr ({self.lr})")
        self._check_architecture()

    def _check_architecture(self) -> None:
        if not models.is_application(self.model):
            needs_application = (
                f"needs a keras.applications model (model=keras:NAME), not model={self.model}"
            )
            if self.pretrained != "none":
                raise RecipeError("pretrained", self.pretrained, needs_application)
            if self.downscale_activation == models.KEEP_ACTIVATION:
                raise RecipeError("downscale_activation", self.downscale_activation,
                                  needs_application)
            return
        if self.drop_path_rate > 0:
            raise RecipeError("drop_path_rate", self.drop_path_rate,
                              f"must be 0 with a keras.applications model ({self.model})")
        smallest = models.min_input_size(self.model)
        if 0 < self.image_size < smallest:
            raise RecipeError("image_size", self.image_size,
                              f"must be 0 (adapted) or >= {smallest} for {self.model}")

    @property
    def mixes_labels(self) -> bool:
        """Whether training labels are soft (mixup or cutmix on)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def final_weight_decay(self) -> float:
        """weight_decay_end, or twice weight_decay when it is 0 (unset)."""
        return self.weight_decay_end or 2.0 * self.weight_decay

    def to_flags(self) -> list[str]:
        """The command-line flags that reproduce this recipe, one per field."""
        return [_format_flag(field.name, getattr(self, field.name)) for field in fields()]

    def to_flagfile(self, path: str | os.PathLike) -> None:
        """Write a flagfile that `tfmagic-train --flagfile=PATH` turns back into this recipe.

        The file is written atomically: a reader sees the old file or the new one, never
        half of one.
        """
        text = "# tfmagic recipe: tfmagic-train --flagfile=THIS_FILE reproduces the run.\n"
        text += "\n".join(self.to_flags()) + "\n"
        write_atomic(path, text)

    @classmethod
    def from_flagfile(cls, path: str | os.PathLike) -> "Recipe":
        """Read a flagfile written by `to_flagfile` (or by hand) into a Recipe.

        Raises:
            FileNotFoundError: there is no such file.
            FlagfileError: a line is not a Recipe flag or its value does not parse.
            RecipeError: a value the Recipe refuses; both errors name the file.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"flagfile {path!r} does not exist")
        values = flags.FlagValues()
        define_flags(values)
        try:
            values(["recipe", f"--flagfile={path}"])
            return from_flags(values)
        except flags.Error as error:
            raise FlagfileError(f"flagfile {path} cannot be read: {error}") from None
        except RecipeError as error:
            raise RecipeError(error.field, error.value,
                              f"{error.allowed} (in flagfile {path})") from None


def fields() -> tuple[dataclasses.Field, ...]:
    """The Recipe's fields, in declaration order."""
    return dataclasses.fields(Recipe)


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    """The value as the field's type (an int for a float field becomes a float); a float
    must be finite, whatever range the field's own check allows."""
    kind = field.type
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RecipeError(field.name, value, f"must be of type {kind.__name__}")
    if kind is float and not math.isfinite(value):
        own_range = field.metadata["allowed"].removeprefix("must be ")
        raise RecipeError(field.name, value, f"must be a finite number {own_range}".rstrip())
    return value


def _format_flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={value}"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define one absl flag per Recipe field (type, default, help and allowed values)."""
    for field in fields():
        meta = field.metadata
        help_text = meta["help"] + (f" ({meta['allowed']})" if meta["allowed"] else "")
        kind = field.type
        if meta["choices"] is not None:
            choices = meta["choices"]
            if isinstance(choices, Registry):
                help_text = f"{meta['help']} {choices.help_text()}."
            flags.DEFINE_enum(field.name, field.default, list(choices), help_text,
                              flag_values=flag_values)
        elif kind is bool:
            flags.DEFINE_bool(field.name, field.default, help_text, flag_values=flag_values)
        elif kind is int:
            flags.DEFINE_integer(field.name, field.default, help_text, flag_values=flag_values)
        elif kind is float:
            flags.DEFINE_float(field.name, field.default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, field.default, help_text, flag_values=flag_values)


def from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Recipe:
    """The Recipe that parsed flags describe (raises RecipeError for a bad value)."""
    return Recipe(**{field.name: flag_values[field.name].value for field in fields()})
