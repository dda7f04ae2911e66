"""Weight decay: L2 vs decoupled numerics by hand, exclusions, schedules inside model.fit."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

from tfmagic.optimizers import SGD, Adam, AdamW, build_optimizer
from tfmagic.schedules import CosinePowerAnnealing, GammaDecay, RegularizationSchedule

W0 = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=np.float32)
GRAD = np.array([[0.3, -0.1], [0.2, 0.4]], dtype=np.float32)


def run_steps(optimizer, steps):
    """Apply the constant gradient GRAD to a variable starting at W0, `steps` times."""
    w = keras.Variable(W0.copy())
    for _ in range(steps):
        optimizer.apply([ops.convert_to_tensor(GRAD)], [w])
    return np.asarray(w)


def sgd_by_hand(steps, lr, momentum, nesterov, wd, mode):
    """PyTorch-style L2 (g + wd w) or decoupled (w - lr wd w), then Keras' SGD update."""
    w, m = W0.astype(np.float64), np.zeros_like(W0, dtype=np.float64)
    for _ in range(steps):
        g = GRAD.astype(np.float64)
        if mode == "l2":
            g = g + wd * w
        else:
            w = w - lr * wd * w
        m = momentum * m - lr * g
        w = w + (momentum * m - lr * g if nesterov else m)
    return w


@pytest.mark.parametrize("name,nesterov", [("sgd_nesterov", True), ("sgd", False)])
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_sgd_decay_modes_match_hand_computation(name, nesterov, mode):
    optimizer = build_optimizer(name, 0.1, momentum=0.9, weight_decay=0.05, decay_mode=mode)
    np.testing.assert_allclose(run_steps(optimizer, 4),
                               sgd_by_hand(4, 0.1, 0.9, nesterov, 0.05, mode), rtol=1e-5)


def test_l2_and_decoupled_differ_with_momentum_and_agree_without():
    l2 = run_steps(build_optimizer("sgd", 0.1, momentum=0.9, weight_decay=0.05), 4)
    dec = run_steps(build_optimizer("sgd", 0.1, momentum=0.9, weight_decay=0.05,
                                    decay_mode="decoupled"), 4)
    assert np.abs(l2 - dec).max() > 1e-3
    plain_l2 = run_steps(build_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.05), 4)
    plain_dec = run_steps(build_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.05,
                                          decay_mode="decoupled"), 4)
    np.testing.assert_allclose(plain_l2, plain_dec, rtol=1e-6)


def adam_by_hand(steps, lr, wd, mode, b1=0.9, b2=0.999, eps=1e-7):
    w = W0.astype(np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, steps + 1):
        g = GRAD.astype(np.float64)
        if mode == "l2":
            g = g + wd * w
        else:
            w = w - lr * wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        w = w - alpha * m / (np.sqrt(v) + eps)
    return w


@pytest.mark.parametrize("name,mode", [("adam", "l2"), ("adam", "decoupled"),
                                       ("adamw", "decoupled")])
def test_adam_decay_modes_match_hand_computation(name, mode):
    optimizer = build_optimizer(name, 0.01, weight_decay=0.5, decay_mode=mode)
    np.testing.assert_allclose(run_steps(optimizer, 3), adam_by_hand(3, 0.01, 0.5, mode),
                               rtol=1e-5)


def zero_gradient_model():
    """A model whose loss ignores its weights: only weight decay can move them."""
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, kernel_initializer="ones", bias_initializer="ones",
                           name="dense")(inputs)
    x = keras.layers.BatchNormalization(gamma_initializer="ones", beta_initializer="ones",
                                        name="bn")(x)
    return keras.Model(inputs, x)


def zero_loss(y_true, y_pred):
    return 0.0 * ops.sum(y_pred, axis=-1)


STEPS, BATCH = 12, 4


def lr_schedule():
    return CosinePowerAnnealing(0.2, STEPS, power=2.0, cycles=3, cycle_decay=0.5,
                                warmup_steps=2)


def decay_schedules():
    return {
        "constant": RegularizationSchedule(0.05),
        "linear": RegularizationSchedule(0.01, "linear", end=0.2, total_steps=STEPS),
        "cycles": RegularizationSchedule(0.02, "cycles", lr_schedule=lr_schedule(), factor=3.0),
        "lr": RegularizationSchedule(0.1, "lr", lr_schedule=lr_schedule()),
    }


@pytest.mark.parametrize("policy", ["constant", "linear", "cycles", "lr"])
@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_every_policy_reaches_the_compiled_train_step(policy, mode):
    schedule = decay_schedules()[policy]
    lr = lr_schedule()
    optimizer = build_optimizer("sgd_nesterov", lr, momentum=0.9,
                                weight_decay_schedule=schedule, decay_mode=mode)
    model = zero_gradient_model()
    model.compile(optimizer=optimizer, loss=zero_loss, jit_compile=True,
                  steps_per_execution=4)
    x = np.random.default_rng(0).normal(size=(STEPS * BATCH, 3)).astype("float32")
    model.fit(x, np.zeros((len(x), 4), "float32"), batch_size=BATCH, epochs=1, shuffle=False,
              verbose=0)
    assert int(optimizer.iterations) == STEPS

    w, m = 1.0, 0.0
    for step in range(STEPS):
        rate, wd = float(lr(step)), float(schedule(step))
        if mode == "l2":
            g = wd * w
            m = 0.9 * m - rate * g
            w = w + 0.9 * m - rate * g
        else:
            w = w - rate * wd * w
    kernel = model.get_layer("dense").kernel.numpy()
    np.testing.assert_allclose(kernel, np.full((3, 4), w), rtol=1e-5)
    assert w < 0.99
    for excluded in (model.get_layer("dense").bias, model.get_layer("bn").gamma,
                     model.get_layer("bn").beta):
        np.testing.assert_array_equal(excluded.numpy(), np.ones(4))


def test_exclusions_can_be_switched_off():
    optimizer = build_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.1,
                                exclude_norm_and_bias=False)
    model = zero_gradient_model()
    model.compile(optimizer=optimizer, loss=zero_loss)
    model.fit(np.ones((8, 3), "float32"), np.zeros((8, 4), "float32"), batch_size=4, verbose=0)
    np.testing.assert_allclose(model.get_layer("dense").bias.numpy(), (1 - 0.01) ** 2)
    np.testing.assert_allclose(model.get_layer("bn").gamma.numpy(), (1 - 0.01) ** 2)


def test_assigning_weight_decay_after_tracing_would_be_ignored_by_keras():
    """Why the schedule lives in the optimizer: Keras' own attribute is frozen at trace."""
    optimizer = keras.optimizers.SGD(0.1, weight_decay=0.0)
    model = zero_gradient_model()
    model.compile(optimizer=optimizer, loss=zero_loss)
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 4), "float32")
    model.fit(x, y, batch_size=4, verbose=0)
    optimizer.weight_decay = 0.5
    model.fit(x, y, batch_size=4, verbose=0)
    np.testing.assert_array_equal(model.get_layer("dense").kernel.numpy(), np.ones((3, 4)))


def test_optimizer_with_schedules_saves_and_reloads_in_a_fresh_process(tmp_path):
    lr = CosinePowerAnnealing(0.1, 100, power=4.0, cycles=2, cycle_decay=0.5, warmup_steps=5)
    wd = RegularizationSchedule(1e-3, "cycles", lr_schedule=GammaDecay(0.1, 100), factor=2.0)
    optimizer = build_optimizer("sgd_nesterov", lr, weight_decay_schedule=wd,
                                decay_mode="decoupled")
    model = zero_gradient_model()
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((12, 3), "float32"), np.zeros((12, 4), "float32"), batch_size=4,
              verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    script = textwrap.dedent(f"""
        import json, keras, tfmagic
        model = keras.saving.load_model({str(path)!r}, safe_mode=True, compile=True)
        opt = model.optimizer
        print(json.dumps({{
            "type": type(opt).__module__ + "." + type(opt).__name__,
            "iterations": int(opt.iterations),
            "mode": opt.decay_mode,
            "nesterov": opt.nesterov,
            "lr": [float(opt._learning_rate(s)) for s in range(0, 100, 9)],
            "wd": [float(opt.weight_decay_schedule(s)) for s in range(0, 100, 9)],
        }}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=True)
    revived = json.loads(proc.stdout.strip().splitlines()[-1])
    assert revived["type"] == "tfmagic.optimizers.SGD"
    assert revived["iterations"] == 3
    assert revived["mode"] == "decoupled" and revived["nesterov"] is True
    np.testing.assert_allclose(revived["lr"], [float(lr(s)) for s in range(0, 100, 9)])
    np.testing.assert_allclose(revived["wd"], [float(wd(s)) for s in range(0, 100, 9)])


@pytest.mark.parametrize("kwargs,name", [
    (dict(name="rmsprop"), "name"),
    (dict(decay_mode="l1"), "decay_mode"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay_schedule=0.3), "weight_decay_schedule"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    arguments = dict(name="sgd_nesterov", learning_rate=0.1) | kwargs
    with pytest.raises(ValueError, match=rf"^{name}="):
        build_optimizer(**arguments)


def test_optimizer_classes():
    assert isinstance(build_optimizer("sgd", 0.1), SGD)
    assert isinstance(build_optimizer("adam", 1e-3), Adam)
    adamw = build_optimizer("adamw", 1e-3, weight_decay=0.05)
    assert isinstance(adamw, AdamW) and adamw.decay_mode == "decoupled"
    with pytest.raises(ValueError, match="decay_mode='l2' is not allowed for AdamW"):
        AdamW(learning_rate=1e-3, decay_mode="l2")
