import numpy as np
import pytest

from stages import network


def tiny_problem(sizes, seed=0, batch=5):
    rng = np.random.default_rng(seed)
    weights, biases = network.init_layers(sizes, rng, dtype=np.float64)
    # Non-zero biases so the check also covers them away from the ReLU kink at zero.
    biases = [rng.normal(0, 0.1, b.shape) for b in biases]
    x = rng.normal(size=(batch, sizes[0]))
    targets = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
    return weights, biases, x, targets


def loss_of(weights, biases, x, targets):
    return network.cross_entropy(network.forward(weights, biases, x, "relu")[-1], targets)


@pytest.mark.parametrize("sizes", [[4, 3], [6, 5, 3], [7, 6, 5, 4]])
def test_gradients_match_central_finite_differences(sizes):
    weights, biases, x, targets = tiny_problem(sizes)
    outputs = network.forward(weights, biases, x, "relu")
    grad_w, grad_b = network.backward(weights, outputs, targets, "relu")
    eps = 1e-6
    for params, grads in ((weights, grad_w), (biases, grad_b)):
        for param, grad in zip(params, grads, strict=True):
            assert grad.shape == param.shape
            numeric = np.zeros_like(param)
            for i in np.ndindex(param.shape):
                saved = param[i]
                param[i] = saved + eps
                up = loss_of(weights, biases, x, targets)
                param[i] = saved - eps
                down = loss_of(weights, biases, x, targets)
                param[i] = saved
                numeric[i] = (up - down) / (2 * eps)
            scale = np.abs(numeric).max() + np.abs(grad).max()
            assert np.abs(numeric - grad).max() / scale < 1e-6


def test_softmax_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    probs = network.softmax(logits)
    np.testing.assert_allclose(probs, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-12)
    assert np.isfinite(network.log_softmax(logits)).all()


def test_cross_entropy_by_hand():
    logits = np.array([[np.log(3.0), 0.0], [0.0, 0.0]])  # probabilities (3/4, 1/4), (1/2, 1/2)
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert network.cross_entropy(logits, targets) == pytest.approx(
        -(np.log(0.75) + np.log(0.5)) / 2)


def test_he_initialisation_scale_and_zero_biases():
    weights, biases = network.init_layers([784, 500, 10], np.random.default_rng(1))
    assert [w.shape for w in weights] == [(784, 500), (500, 10)]
    assert all(w.dtype == np.float32 for w in weights + biases)
    assert weights[0].std() == pytest.approx(np.sqrt(2 / 784), rel=0.02)
    assert weights[1].std() == pytest.approx(np.sqrt(2 / 500), rel=0.05)
    assert not any(b.any() for b in biases)


def test_forward_keeps_every_layer_and_applies_relu_to_hidden_only():
    weights, biases, x, _ = tiny_problem([4, 6, 3])
    outputs = network.forward(weights, biases, x, "relu")
    assert [o.shape for o in outputs] == [(5, 4), (5, 6), (5, 3)]
    np.testing.assert_array_equal(outputs[1], np.maximum(x @ weights[0] + biases[0], 0))
    assert (outputs[-1] < 0).any()  # logits are not clipped


def test_chunked_logits_equal_one_pass():
    weights, biases, x, _ = tiny_problem([4, 6, 3], batch=25)
    np.testing.assert_allclose(
        network.logits_in_chunks(weights, biases, x, "relu", chunk=7),
        network.forward(weights, biases, x, "relu")[-1], rtol=1e-12)


def test_score_is_loss_and_accuracy():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    loss, accuracy = network.score(logits, targets)
    assert accuracy == pytest.approx(2 / 3)
    assert loss == pytest.approx(network.cross_entropy(logits, targets))
