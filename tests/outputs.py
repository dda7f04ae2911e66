"""Shared by the model tests: a model's output computed eagerly."""

import keras


def inference(model, images):
    """The model's inference output as a numpy array, computed eagerly: no traced predict
    function, which for a few images costs more than the inference."""
    return keras.ops.convert_to_numpy(model(images, training=False))
