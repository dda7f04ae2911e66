"""Schedules against an independent numpy implementation of their formulas."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmagic.schedules import (
    CosineAnnealing,
    CosinePowerAnnealing,
    GammaDecay,
    RegularizationSchedule,
)


def reference_cosine_power(step, peak, total, power, cycles, decay, warmup, start, floor):
    """The documented formula, written out plainly in float64."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    if step >= total:
        return floor
    length = (total - warmup) / cycles
    k = min(int((step - warmup) // length), cycles - 1)
    t = min(max((step - warmup - k * length) / length, 0.0), 1.0)
    c = (1 + math.cos(math.pi * t)) / 2
    shape = c if power == 1 else (power**c - 1) / (power - 1)
    return floor + (peak * decay**k - floor) * shape


def interesting_steps(total, warmup, cycles):
    length = (total - warmup) / cycles
    steps = {0, 1, warmup - 1, warmup, warmup + 1, total - 1, total, total + 1, total + 100}
    for k in range(cycles + 1):
        boundary = warmup + k * length
        steps |= {math.floor(boundary) - 1, math.floor(boundary), math.ceil(boundary),
                  math.ceil(boundary) + 1}
    steps |= set(np.linspace(0, total + 10, 97).astype(int).tolist())
    return sorted(s for s in steps if s >= 0)


CASES = [
    dict(peak_lr=0.1, total_steps=1000, power=2.0, cycles=1),
    dict(peak_lr=0.4, total_steps=1003, power=4.0, cycles=3, cycle_decay=0.5,
         warmup_steps=37, warmup_start_lr=0.01, min_lr=1e-3),
    dict(peak_lr=0.05, total_steps=500, power=1.0, cycles=2, cycle_decay=0.7,
         warmup_steps=20, min_lr=1e-4),
    dict(peak_lr=1.0, total_steps=240, power=0.5, cycles=4, cycle_decay=0.9, warmup_steps=10),
    dict(peak_lr=0.1, total_steps=300, power=10.0, cycles=2, warmup_steps=1),
]


@pytest.mark.parametrize("kwargs", CASES)
def test_cosine_power_matches_reference(kwargs):
    schedule = CosinePowerAnnealing(**kwargs)
    full = dict(power=2.0, cycles=1, cycle_decay=1.0, warmup_steps=0, warmup_start_lr=0.0,
                min_lr=0.0) | kwargs
    steps = interesting_steps(full["total_steps"], full["warmup_steps"], full["cycles"])
    got = np.array([float(schedule(tf.constant(s, tf.int64))) for s in steps])
    want = np.array([
        reference_cosine_power(s, full["peak_lr"], full["total_steps"], full["power"],
                               full["cycles"], full["cycle_decay"], full["warmup_steps"],
                               full["warmup_start_lr"], full["min_lr"])
        for s in steps
    ])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_each_cycle_peaks_at_decayed_peak_and_is_monotone_inside():
    schedule = CosinePowerAnnealing(0.2, 1200, power=4.0, cycles=4, cycle_decay=0.6,
                                    warmup_steps=200, min_lr=1e-3)
    values = np.array([float(v) for v in schedule(tf.range(0, 1201, dtype=tf.int64))])
    for k in range(4):
        start, stop = 200 + 250 * k, 200 + 250 * (k + 1)
        assert values[start] == pytest.approx(0.2 * 0.6**k, rel=1e-6)
        inside = values[start:stop]
        assert np.all(np.diff(inside) <= 1e-9)
        assert inside.max() == pytest.approx(0.2 * 0.6**k, rel=1e-6)
    assert values[1200] == pytest.approx(1e-3)
    assert np.all(np.diff(values[:201]) > 0)


def test_power_one_equals_keras_cosine_decay_with_warmup_and_floor():
    ours = CosineAnnealing(0.3, 1000, warmup_steps=100, warmup_start_lr=0.01, min_lr=0.003)
    keras_schedule = keras.optimizers.schedules.CosineDecay(
        0.01, decay_steps=900, alpha=0.003 / 0.3, warmup_target=0.3, warmup_steps=100
    )
    steps = interesting_steps(1000, 100, 1)
    np.testing.assert_allclose([float(ours(s)) for s in steps],
                               [float(keras_schedule(s)) for s in steps], rtol=1e-5, atol=1e-7)


def test_power_close_to_one_is_plain_cosine_without_precision_loss():
    steps = tf.range(0, 101, dtype=tf.int64)
    plain = CosinePowerAnnealing(1.0, 100, power=1.0)(steps).numpy()
    for power in (1 + 1e-12, 1 - 1e-9, 1 + 1e-6):
        near = CosinePowerAnnealing(1.0, 100, power=power)(steps).numpy()
        np.testing.assert_allclose(near, plain, atol=2e-6)


def test_float64_step_gives_float64_and_matches_reference():
    schedule = CosinePowerAnnealing(0.1, 1000, power=2.0, cycles=2, cycle_decay=0.5,
                                    warmup_steps=10)
    value = schedule(tf.constant(333.0, tf.float64))
    assert value.dtype == tf.float64
    want = reference_cosine_power(333, 0.1, 1000, 2.0, 2, 0.5, 10, 0.0, 0.0)
    assert float(value) == pytest.approx(want, rel=1e-12)
    assert schedule(tf.constant(5, tf.int64)).dtype == tf.float32


@pytest.mark.parametrize("jit", [False, True])
def test_works_in_compiled_functions(jit):
    schedule = CosinePowerAnnealing(0.1, 1000, power=2.0, cycles=3, cycle_decay=0.5,
                                    warmup_steps=50)
    step = tf.Variable(0, dtype=tf.int64)
    compiled = tf.function(lambda: schedule(step), jit_compile=jit)
    for s in (0, 25, 50, 400, 999, 2000):
        step.assign(s)
        assert float(compiled()) == pytest.approx(float(schedule(s)), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("cls,kwargs", [
    (CosinePowerAnnealing, dict(peak_lr=0.1, total_steps=500, power=4.0, cycles=2,
                                cycle_decay=0.5, warmup_steps=5, warmup_start_lr=0.001,
                                min_lr=1e-4)),
    (CosineAnnealing, dict(peak_lr=0.1, total_steps=500, cycles=2, warmup_steps=5)),
    (GammaDecay, dict(peak_lr=0.1, total_steps=500, gamma=0.2, milestones=(0.3, 0.6, 0.9),
                      warmup_steps=5)),
])
def test_config_round_trip(cls, kwargs):
    schedule = cls(**kwargs)
    again = cls.from_config(schedule.get_config())
    serialized = keras.saving.serialize_keras_object(schedule)
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is cls
    steps = tf.range(0, 520, dtype=tf.int64)
    np.testing.assert_array_equal(again(steps).numpy(), schedule(steps).numpy())
    np.testing.assert_array_equal(revived(steps).numpy(), schedule(steps).numpy())


@pytest.mark.parametrize("kwargs,name", [
    (dict(power=0.0), "power"),
    (dict(power=-2.0), "power"),
    (dict(cycles=0), "cycles"),
    (dict(warmup_steps=100), "warmup_steps"),
    (dict(warmup_steps=150), "warmup_steps"),
    (dict(peak_lr=-0.1), "peak_lr"),
    (dict(peak_lr=0.0), "peak_lr"),
    (dict(min_lr=0.2), "min_lr"),
    (dict(min_lr=-1e-3), "min_lr"),
    (dict(cycle_decay=0.0), "cycle_decay"),
    (dict(cycle_decay=1.5), "cycle_decay"),
    (dict(warmup_start_lr=0.5), "warmup_start_lr"),
    (dict(total_steps=0), "total_steps"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    arguments = dict(peak_lr=0.1, total_steps=100) | kwargs
    with pytest.raises(ValueError, match=rf"^{name}=.* is not allowed: "):
        CosinePowerAnnealing(**arguments)


def test_gamma_decay_against_reference():
    schedule = GammaDecay(0.1, 1000, gamma=0.2, milestones=(0.3, 0.6, 0.9), warmup_steps=50,
                          warmup_start_lr=0.01)
    for step in interesting_steps(1000, 50, 1) + [299, 300, 599, 600, 899, 900]:
        if step < 50:
            want = 0.01 + (0.1 - 0.01) * step / 50
        else:
            want = 0.1 * 0.2 ** sum(step >= m for m in (300, 600, 900))
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step


@pytest.mark.parametrize("milestones", [(0.75, 0.5), (0.0, 0.5), (0.5, 1.0), (0.01,)])
def test_gamma_decay_rejects_bad_milestones(milestones):
    with pytest.raises(ValueError, match="milestones="):
        GammaDecay(0.1, 1000, milestones=milestones, warmup_steps=20)


def test_regularization_policies_against_reference():
    lr = CosinePowerAnnealing(0.1, 1000, power=2.0, cycles=4, cycle_decay=0.5, warmup_steps=100)
    steps = np.arange(0, 1100, 7)
    tensor_steps = tf.constant(steps, tf.int64)
    constant = RegularizationSchedule(5e-4)(tensor_steps).numpy()
    np.testing.assert_allclose(constant, 5e-4)

    linear = RegularizationSchedule(1e-4, "linear", end=9e-4, total_steps=800)(tensor_steps)
    np.testing.assert_allclose(linear.numpy(), 1e-4 + 8e-4 * np.minimum(steps / 800, 1),
                               rtol=1e-5)

    cycles = RegularizationSchedule(1e-4, "cycles", lr_schedule=lr, factor=2.0)(tensor_steps)
    cycle_of = np.clip((steps - 100) // 225, 0, 3)
    np.testing.assert_allclose(cycles.numpy(), 1e-4 * 2.0**cycle_of, rtol=1e-6)

    to_end = RegularizationSchedule(1e-4, "cycles", lr_schedule=lr, end=8e-4)(tensor_steps)
    np.testing.assert_allclose(to_end.numpy(), 1e-4 * 2.0**cycle_of, rtol=1e-5)

    follow = RegularizationSchedule(5e-4, "lr", lr_schedule=lr)(tensor_steps)
    expected = [5e-4 * reference_cosine_power(s, 0.1, 1000, 2.0, 4, 0.5, 100, 0, 0) / 0.1
                for s in steps]
    np.testing.assert_allclose(follow.numpy(), expected, rtol=2e-5, atol=1e-10)


def test_cycles_policy_with_gamma_decay_steps_at_milestones():
    lr = GammaDecay(0.1, 100, milestones=(0.5, 0.75))
    wd = RegularizationSchedule(1e-4, "cycles", lr_schedule=lr, factor=3.0)
    values = [float(wd(s)) for s in (0, 49, 50, 74, 75, 99)]
    np.testing.assert_allclose(values, [1e-4, 1e-4, 3e-4, 3e-4, 9e-4, 9e-4], rtol=1e-6)


def test_regularization_schedule_round_trip_keeps_nested_lr_schedule():
    lr = CosinePowerAnnealing(0.1, 500, cycles=2, warmup_steps=10)
    wd = RegularizationSchedule(2e-4, "lr", lr_schedule=lr)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wd))
    steps = tf.range(0, 500, dtype=tf.int64)
    np.testing.assert_array_equal(revived(steps).numpy(), wd(steps).numpy())


@pytest.mark.parametrize("kwargs,name", [
    (dict(base=-1e-4), "base"),
    (dict(policy="cosine"), "policy"),
    (dict(policy="linear", total_steps=100), "end"),
    (dict(policy="linear", end=1e-3), "total_steps"),
    (dict(policy="cycles", factor=2.0), "lr_schedule"),
    (dict(policy="lr"), "lr_schedule"),
    (dict(policy="cycles", lr_schedule=CosinePowerAnnealing(0.1, 100, cycles=2)), "factor"),
])
def test_regularization_bad_arguments(kwargs, name):
    arguments = dict(base=1e-4) | kwargs
    with pytest.raises(ValueError, match=rf"^{name}="):
        RegularizationSchedule(**arguments)
