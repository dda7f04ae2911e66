"""tf.data-ready augmentation: AutoAugment, the colour baseline, mixing, erasing and crops.

Every part runs vectorized on batches inside a `tf.data` pipeline (and eagerly):

- `AutoAugment`: the AutoAugment paper's ImageNet policy with torchvision's magnitudes
  (also the EfficientNet "v0" policy), exact to Pillow's ops;
- `ColorAugment`: the standard colour-jitter baseline;
- `MixUp`, `CutMix`: batch mixing with soft labels;
- `Cutout`, `RandomErasing`: erased boxes;
- `pad_and_crop`, `random_resized_crop`, `center_crop`, `random_flip`: crop schemes;
- `build_train_augment`, `build_eval_transform`, `preview`: a Recipe's augmentation for the
  input pipeline, and a PNG grid of what it does. They live in `tfmagic.augment.pipeline`,
  part of the run layer (it reads a Recipe and draws with matplotlib), which is imported
  only when one of them is first used, so that importing the library stays light.
"""


from tfmagic.augment.autoaugment import IMAGENET_POLICY, V0_POLICY, AutoAugment
from tfmagic.augment.color import ColorAugment
from tfmagic.augment.crops import center_crop, pad_and_crop, random_flip, random_resized_crop
from tfmagic.augment.erasing import Cutout, RandomErasing
from tfmagic.augment.mixing import CutMix, MixUp

__all__ = [
    "IMAGENET_POLICY",
    "V0_POLICY",
    "AutoAugment",
    "ColorAugment",
    "CutMix",
    "Cutout",
    "MixUp",
    "RandomErasing",
    "build_eval_transform",
    "build_train_augment",
    "center_crop",
    "pad_and_crop",
    "preview",
    "random_flip",
    "random_resized_crop",
]
_RUN_LAYER = ("build_eval_transform", "build_train_augment", "preview")


def __getattr__(name: str):
    if name in _RUN_LAYER:
        from tfmagic.augment import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
