"""tfmagic: the dark-magic training checklist for Keras 3 / TensorFlow."""

__version__ = "0.1.0"
