"""Recipe: defaults, every validation rule, flags generated from the fields, flagfiles."""

import dataclasses
import math

import pytest
from absl import flags

from tfmagic import models
from tfmagic.recipe import Recipe, RecipeError, define_flags, fields, from_flags

# (field, bad value, words the message must contain). One row per rule.
BAD_VALUES = [
    ("dataset", "imagenet", "fashion_mnist"),
    ("dataset", "folder:/no/such/dir", "/no/such/dir"),
    ("dataset", "tfds:", "needs a dataset name"),
    ("cache", "disk", "auto, memory, none"),
    ("label_base", -1, ">= 0"),
    ("train_subset", -1, ">= 0"),
    ("validation_fraction", 1.0, "[0, 1)"),
    ("validation_fraction", -0.1, "[0, 1)"),
    ("image_size", 16, ">= 28"),
    ("batch_size", 0, ">= 1"),
    ("eval_batch_size", -1, ">= 0"),
    ("epochs", 0, ">= 1"),
    ("model", "resnet18", "resnet20"),
    ("width", 0.0, "(0, 8]"),
    ("width", 9.0, "(0, 8]"),
    ("model", "keras:NoSuchNet", "'keras:NAME'"),
    ("downscale_activation", "gelu", "leaky_relu, relu, swish, keep"),
    ("downscale_activation", "keep", "needs a keras.applications model"),
    ("drop_path_rate", 1.0, "[0, 1)"),
    ("drop_path_rate", -0.1, "[0, 1)"),
    ("pooling", "max", "avg, attention"),
    ("aux_loss_weight", -0.1, ">= 0"),
    ("pretrained", "/no/such/file.weights.h5", "existing weights file"),
    ("pretrained", "imagenet", "needs a keras.applications model"),
    ("num_classes", 1, ">= 2"),
    ("lr", 0.0, "> 0"),
    ("lr", -1.0, "> 0"),
    ("momentum", 1.0, "[0, 1)"),
    ("lr_schedule", "onecycle", "cosine_power_cycles, cosine, gamma"),
    ("lr_power", 0.0, "> 0"),
    ("lr_cycles", 0, ">= 1"),
    ("lr_cycle_decay", 0.0, "(0, 1]"),
    ("lr_cycle_decay", 1.5, "(0, 1]"),
    ("warmup_epochs", -1.0, ">= 0"),
    ("warmup_epochs", 30.0, "< epochs (30)"),
    ("min_lr", -1e-4, ">= 0"),
    ("min_lr", 0.5, "<= lr (0.1)"),
    ("optimizer", "rmsprop", "sgd_nesterov, sgd, adam, adamw"),
    ("weight_decay", -1e-4, ">= 0"),
    ("weight_decay_mode", "l1", "l2, decoupled"),
    ("weight_decay_schedule", "cosine", "constant, linear, cycles, lr"),
    ("weight_decay_end", -1.0, ">= 0"),
    ("label_smoothing", 1.0, "[0, 1)"),
    ("label_smoothing_convention", "torch", "article, keras"),
    ("augment", "randaugment", "autoaugment, color, none"),
    ("crop_scheme", "five_crop", "pad_and_crop, random_resized_crop, none"),
    ("crop_fraction", 0.0, "(0, 1]"),
    ("crop_fraction", 1.2, "(0, 1]"),
    ("cutout", -0.1, "[0, 1]"),
    ("cutout", 1.5, "[0, 1]"),
    ("mixup_alpha", -0.2, ">= 0"),
    ("cutmix_alpha", -1.0, ">= 0"),
    ("strategy", "horovod", "auto, default, mirrored, multi_worker, tpu"),
    ("lr_scaling", "sqrt", "none, linear"),
    ("precision", "float16", "float32, mixed_float16, mixed_bfloat16"),
    ("steps_per_execution", 0, ">= 1"),
    ("seed", -3, ">= 0"),
    ("output_dir", " ", "non-empty"),
    ("epochs", 2.5, "type int"),
    ("lr", "fast", "type float"),
    ("batch_size", True, "type int"),
    # Every float field refuses inf, -inf and nan up front, with its own range.
    *[(f.name, value, "must be a finite number " + f.metadata["allowed"].removeprefix("must be "))
      for f in fields() if f.type is float for value in (math.inf, -math.inf, math.nan)],
]


def test_defaults_are_valid_and_recommended():
    recipe = Recipe()
    assert recipe.dataset == "fashion_mnist"
    assert recipe.model in models.MODEL_NAMES
    assert recipe.downscale_activation == "leaky_relu"


@pytest.mark.parametrize("field,value,words", BAD_VALUES)
def test_every_rule_names_field_value_and_allowed(field, value, words):
    with pytest.raises(RecipeError) as caught:
        Recipe(**{field: value})
    message = str(caught.value)
    assert message.startswith(f"{field}={value!r}")
    assert words in message
    assert caught.value.field == field


def test_every_checked_field_has_a_bad_value_row():
    checked = {f.name for f in fields() if f.metadata["check"] or f.metadata["choices"]}
    assert checked == {row[0] for row in BAD_VALUES}


def test_non_finite_floats_are_refused_before_any_schedule_or_data():
    with pytest.raises(RecipeError) as caught:
        Recipe(lr=math.inf)
    assert str(caught.value) == "lr=inf is not allowed: must be a finite number > 0"
    with pytest.raises(RecipeError) as caught:
        Recipe(weight_decay=math.nan)
    assert str(caught.value) == "weight_decay=nan is not allowed: must be a finite number >= 0"
    with pytest.raises(RecipeError) as caught:
        Recipe(cutmix_alpha=math.inf)
    assert caught.value.allowed == "must be a finite number >= 0 (0 = off)"


def test_gamma_needs_the_warmup_to_end_before_its_first_decay():
    with pytest.raises(RecipeError) as caught:
        Recipe(lr_schedule="gamma", epochs=1, warmup_epochs=0.6)
    assert str(caught.value) == (
        "warmup_epochs=0.6 is not allowed: must be < epochs / 2 (0.5) with lr_schedule=gamma "
        "(its first step decay is at half of training)")
    assert caught.value.field == "warmup_epochs"
    with pytest.raises(RecipeError, match=r"^warmup_epochs=5.0 .*< epochs / 2 \(5\)"):
        Recipe(lr_schedule="gamma", epochs=10, warmup_epochs=5.0)
    assert Recipe(lr_schedule="gamma", epochs=10, warmup_epochs=4.9).warmup_epochs == 4.9
    assert Recipe(lr_schedule="cosine", epochs=1, warmup_epochs=0.6).warmup_epochs == 0.6


def test_final_weight_decay_defaults_to_twice_the_start():
    assert Recipe(weight_decay=3e-4).final_weight_decay == pytest.approx(6e-4)
    assert Recipe(weight_decay=3e-4, weight_decay_end=1e-3).final_weight_decay == 1e-3


def test_replace_validates_again():
    with pytest.raises(RecipeError, match="epochs=0"):
        dataclasses.replace(Recipe(), epochs=0)


def test_int_is_accepted_for_float_fields():
    assert Recipe(lr=1).lr == 1.0
    assert isinstance(Recipe(lr=1).lr, float)


def test_flags_are_generated_from_fields():
    values = flags.FlagValues()
    define_flags(values)
    for field in fields():
        flag = values[field.name]
        assert flag.default == field.default
        assert field.metadata["help"] in flag.help
        if field.metadata["choices"]:
            assert list(flag.parser.enum_values) == list(field.metadata["choices"])
    values(["prog", "--lr=0.3", "--epochs=7", "--model=mobilenet_small"])
    recipe = from_flags(values)
    assert (recipe.lr, recipe.epochs, recipe.model) == (0.3, 7, "mobilenet_small")


def test_flagfile_round_trip(tmp_path):
    recipe = Recipe(
        train_subset=1234, validation_fraction=0.2, image_size=32, batch_size=64, epochs=3,
        model="mobilenet_small", width=0.5, downscale_activation="swish", num_classes=10,
        lr_schedule="gamma", lr=0.05, lr_power=4.0, lr_cycles=3, lr_cycle_decay=0.7,
        warmup_epochs=0.5, min_lr=1e-4, optimizer="adamw", momentum=0.8, weight_decay=1e-3,
        weight_decay_mode="decoupled", weight_decay_schedule="cycles", weight_decay_end=4e-3,
        label_smoothing=0.2, label_smoothing_convention="keras", augment="color",
        crop_scheme="random_resized_crop", crop_fraction=0.875, cutout=0.25, mixup_alpha=0.2,
        cutmix_alpha=1.0, seed=7, se=False, drop_path_rate=0.1, pooling="attention",
        aux_loss_weight=0.3,
        output_dir=str(tmp_path / "out"),
    )
    path = tmp_path / "recipe.cfg"
    recipe.to_flagfile(path)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    expected = []
    for f in fields():
        value = getattr(recipe, f.name)
        if isinstance(value, bool):
            expected.append(f"--{f.name}" if value else f"--no{f.name}")
        else:
            expected.append(f"--{f.name}={value}")
    assert lines == expected
    assert "--nose" in lines
    assert Recipe.from_flagfile(path) == recipe
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.cfg"]


def test_keras_application_recipe_round_trip_and_rules(tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"")
    recipe = Recipe(model="keras:EfficientNetB0", pretrained=str(weights),
                    downscale_activation="keep", image_size=64)
    recipe.to_flagfile(tmp_path / "recipe.cfg")
    assert Recipe.from_flagfile(tmp_path / "recipe.cfg") == recipe
    assert Recipe(model="keras:MobileNetV2", pretrained="imagenet").pretrained == "imagenet"
    with pytest.raises(RecipeError, match="^drop_path_rate=0.1 .*keras:MobileNetV2"):
        Recipe(model="keras:MobileNetV2", drop_path_rate=0.1)
    with pytest.raises(RecipeError, match="^image_size=64 .*>= 75 for keras:InceptionV3"):
        Recipe(model="keras:InceptionV3", image_size=64)


def test_se_is_on_by_default_and_a_negatable_flag():
    values = flags.FlagValues()
    define_flags(values)
    values(["prog", "--nose"])
    assert Recipe().se is True
    assert from_flags(values).se is False


def test_from_flagfile_rejects_bad_value_and_missing_file(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("--epochs=0\n")
    with pytest.raises(RecipeError, match="epochs=0"):
        Recipe.from_flagfile(path)
    with pytest.raises(FileNotFoundError, match="nothere.cfg"):
        Recipe.from_flagfile(tmp_path / "nothere.cfg")


@pytest.mark.parametrize("name", ["quickstart.cfg", "fashion_mnist.cfg"])
def test_shipped_flagfiles_parse(name):
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "flags" / name
    recipe = Recipe.from_flagfile(path)
    assert recipe.dataset == "fashion_mnist"
    assert recipe.output_dir == f"runs/{name.removesuffix('.cfg')}"
