"""The random generator that each augmentation component owns."""

import tensorflow as tf

from tfmagic._checks import check, is_int


def generator(seed) -> tf.random.Generator:
    """A `tf.random.Generator`: non-deterministic for `seed=None`, else seeded with `seed`.

    Raises:
        ValueError: `seed` is neither None nor an integer >= 0.
    """
    check(seed is None or (is_int(seed) and seed >= 0), "seed", seed,
          "must be None or an integer >= 0")
    if seed is None:
        return tf.random.Generator.from_non_deterministic_state()
    return tf.random.Generator.from_seed(int(seed))
