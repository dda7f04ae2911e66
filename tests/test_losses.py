"""Label smoothing: targets and loss values against hand computation, both conventions."""

import keras
import numpy as np
import pytest

from tfmagic.losses import LabelSmoothingCrossEntropy, smooth_labels

LOGITS = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 3.0], [-2.0, 1.0, 1.0, 0.5]],
                  dtype=np.float32)
LABELS = np.array([0, 3, 2])


def log_softmax(z):
    z = z.astype(np.float64)
    return z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1,
                                                                                   keepdims=True))


def hand_targets(labels, k, eps, convention):
    targets = np.zeros((len(labels), k))
    for row, label in enumerate(labels):
        if convention == "article":
            targets[row] = eps / (k - 1)
            targets[row, label] = 1 - eps
        else:
            targets[row] = eps / k
            targets[row, label] = 1 - eps + eps / k
    return targets


@pytest.mark.parametrize("convention", ["article", "keras"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2])
def test_targets(convention, eps):
    one_hot = np.eye(4)[LABELS]
    got = np.asarray(smooth_labels(keras.ops.convert_to_tensor(one_hot), eps, convention))
    np.testing.assert_allclose(got, hand_targets(LABELS, 4, eps, convention), atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0)


def test_article_true_class_and_others():
    got = np.asarray(smooth_labels(keras.ops.convert_to_tensor(np.eye(5)[[1]]), 0.2))
    np.testing.assert_allclose(got, [[0.05, 0.8, 0.05, 0.05, 0.05]])


@pytest.mark.parametrize("convention", ["article", "keras"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2])
@pytest.mark.parametrize("label_form", ["sparse", "sparse_column", "one_hot"])
def test_loss_against_hand_computation(convention, eps, label_form):
    labels = {"sparse": LABELS, "sparse_column": LABELS[:, None],
              "one_hot": np.eye(4, dtype=np.float32)[LABELS]}[label_form]
    loss = LabelSmoothingCrossEntropy(eps, convention=convention, from_logits=True)
    want = -(hand_targets(LABELS, 4, eps, convention) * log_softmax(LOGITS)).sum(-1).mean()
    assert float(loss(labels, LOGITS)) == pytest.approx(want, rel=1e-5)


def test_probabilities_input_matches_logits_input():
    probs = np.exp(log_softmax(LOGITS)).astype(np.float32)
    from_probs = LabelSmoothingCrossEntropy(0.1)(LABELS, probs)
    from_logits = LabelSmoothingCrossEntropy(0.1, from_logits=True)(LABELS, LOGITS)
    assert float(from_probs) == pytest.approx(float(from_logits), rel=1e-5)


def test_keras_convention_equals_keras_categorical_crossentropy():
    ours = LabelSmoothingCrossEntropy(0.2, convention="keras", from_logits=True)
    theirs = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    one_hot = np.eye(4, dtype=np.float32)[LABELS]
    assert float(ours(LABELS, LOGITS)) == pytest.approx(float(theirs(one_hot, LOGITS)), rel=1e-5)


def test_soft_mixup_target():
    soft = np.array([[0.5, 0.5, 0.0, 0.0]], dtype=np.float32)
    eps, k = 0.2, 4
    got = np.asarray(smooth_labels(keras.ops.convert_to_tensor(soft), eps))
    mixed = 0.5 - eps / 2 + eps / (2 * (k - 1))
    np.testing.assert_allclose(got, [[mixed, mixed, eps / 3, eps / 3]], rtol=1e-6)
    loss = LabelSmoothingCrossEntropy(eps, from_logits=True)(soft, LOGITS[:1])
    assert float(loss) == pytest.approx(-(got * log_softmax(LOGITS[:1])).sum(), rel=1e-5)


def test_serializable_and_validated():
    loss = LabelSmoothingCrossEntropy(0.2, convention="keras", from_logits=True)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert (revived.epsilon, revived.convention, revived.from_logits) == (0.2, "keras", True)
    assert float(revived(LABELS, LOGITS)) == pytest.approx(float(loss(LABELS, LOGITS)))
    with pytest.raises(ValueError, match="^epsilon=1.0 is not allowed"):
        LabelSmoothingCrossEntropy(1.0)
    with pytest.raises(ValueError, match="^convention='torch' is not allowed"):
        LabelSmoothingCrossEntropy(0.1, convention="torch")
