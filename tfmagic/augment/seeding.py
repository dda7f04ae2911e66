"""The random numbers of the augmentation components, and where they come from.

Each component (a crop, AutoAugment, Cutout, MixUp, ...) owns a `Draws`: called eagerly or in
a model, it draws from a ``tf.random.Generator`` seeded with the component's seed, so a
component created again with that seed gives the same outputs for the same sequence of
calls. An input pipeline needs more: its map calls run concurrently, and a resumed run starts
in the middle of the stream, so draws that depend on the order of calls would make two runs
with one seed differ. While a pipeline traces its per-batch function under `batch_key`, every
seeded component draws instead from that batch's key and its own seed alone (stateless
draws): each batch's augmentation then follows from the seed and the batch's place in the
data, whatever ran before it.
"""

import contextlib
import threading

import tensorflow as tf

from tfmagic._checks import check, is_int

_active = threading.local()


class StatelessDraws:
    """Draws from a stateless key (a ``[2]`` integer tensor), a fresh key for each call: the
    n-th call's numbers follow from the key and n alone. Has the methods of a
    ``tf.random.Generator`` that the components use."""

    def __init__(self, key: tf.Tensor):
        self.key, self.calls = key, 0

    def _next_key(self) -> tf.Tensor:
        self.calls += 1
        return tf.random.experimental.stateless_fold_in(self.key, self.calls)

    def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, self._next_key(), minval=minval,
                                           maxval=maxval, dtype=dtype)

    def make_seeds(self, count=1) -> tf.Tensor:
        """``[2, count]`` int64 seeds for stateless operations."""
        return tf.random.stateless_uniform([2, count], self._next_key(), minval=None,
                                           maxval=None, dtype=tf.int64)


class Draws:
    """A component's random numbers: its generator's, or within `batch_key` stateless draws
    from the batch's key and ``seed`` (for ``seed=None`` always the generator's, which is
    then non-deterministic)."""

    def __init__(self, seed):
        self.seed = seed
        self._generator = (tf.random.Generator.from_non_deterministic_state() if seed is None
                           else tf.random.Generator.from_seed(int(seed)))

    def _source(self):
        keyed = getattr(_active, "draws", None)
        if keyed is None or self.seed is None:
            return self._generator
        key, made = keyed
        if self.seed not in made:
            made[self.seed] = StatelessDraws(
                tf.random.experimental.stateless_fold_in(key, self.seed))
        return made[self.seed]

    def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32) -> tf.Tensor:
        return self._source().uniform(shape, minval=minval, maxval=maxval, dtype=dtype)

    def make_seeds(self, count=1) -> tf.Tensor:
        """``[2, count]`` int64 seeds for stateless operations."""
        return self._source().make_seeds(count)


def generator(seed) -> Draws:
    """The `Draws` of a component with `seed`: None (non-deterministic) or an integer >= 0.

    Raises:
        ValueError: `seed` is neither None nor an integer >= 0.
    """
    check(seed is None or (is_int(seed) and seed >= 0), "seed", seed,
          "must be None or an integer >= 0")
    return Draws(seed)


@contextlib.contextmanager
def batch_key(key: tf.Tensor):
    """Within the block (in the thread that enters it), every seeded component's draws come
    from ``key``, a ``[2]`` integer tensor, and the component's seed: for use while a
    pipeline traces the function that augments one batch, with a key made from the seed and
    the batch's place in the data."""
    previous = getattr(_active, "draws", None)
    _active.draws = (key, {})
    try:
        yield
    finally:
        _active.draws = previous
