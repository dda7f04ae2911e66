"""tfmagic: the dark-magic training checklist for Keras 3 / TensorFlow.

Importing the package registers its Keras objects (schedules, optimizers, losses, layers,
augmentation layers), so a model saved with them reloads with `keras.saving.load_model`
after `import tfmagic`, with no `custom_objects`.
"""

from tfmagic import _quiet_start  # noqa: F401, I001  (first: binaries load TensorFlow quietly)
from tfmagic import augment, callbacks, layers, losses, optimizers, schedules

__version__ = "0.1.0"
__all__ = ["augment", "callbacks", "layers", "losses", "optimizers", "schedules"]
