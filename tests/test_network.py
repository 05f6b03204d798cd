import numpy as np
import pytest

from stages import network

ACTIVATIONS = sorted(network.ACTIVATIONS)


def tiny_problem(sizes, seed=0, batch=5):
    """A float64 network with non-zero biases (so the check also covers them away from
    ReLU's kink at zero), inputs and one-hot targets."""
    rng = np.random.default_rng(seed)
    params = network.init_params(sizes, "glorot", rng, np.float64)
    _weights, biases = network.layer_views(params, sizes)
    for b in biases:
        b[...] = rng.normal(0, 0.1, b.shape)
    x = rng.normal(size=(batch, sizes[0]))
    targets = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
    return params, x, targets


def dropout_masks(sizes, batch, seed, keep=0.6):
    rng = np.random.default_rng(seed)
    return [(rng.random((batch, n)) < keep) / keep for n in sizes[1:-1]]


def loss_of(params, sizes, x, targets, activation, l2, masks):
    weights, biases = network.layer_views(params, sizes)
    outputs, _ = network.forward(weights, biases, x, activation, masks)
    penalty = 0.5 * l2 * sum((w**2).sum() for w in weights)
    return network.cross_entropy(outputs[-1], targets) + penalty


def analytic_gradient(params, sizes, x, targets, activation, l2, masks):
    weights, biases = network.layer_views(params, sizes)
    grad = np.zeros_like(params)
    grad_w, grad_b = network.layer_views(grad, sizes)
    outputs, slopes = network.forward(weights, biases, x, activation, masks)
    delta = network.output_delta(outputs[-1], targets)
    network.backward(weights, outputs, slopes, delta, grad_w, grad_b)
    network.add_weight_decay(grad, params, sizes, l2)
    return grad


def numeric_gradient(params, sizes, x, targets, activation, l2, masks, eps=1e-6):
    numeric = np.zeros_like(params)
    for i in range(len(params)):
        saved = params[i]
        params[i] = saved + eps
        up = loss_of(params, sizes, x, targets, activation, l2, masks)
        params[i] = saved - eps
        down = loss_of(params, sizes, x, targets, activation, l2, masks)
        params[i] = saved
        numeric[i] = (up - down) / (2 * eps)
    return numeric


# Softmax regression ([4, 3]) has no hidden layer, so neither an activation nor dropout.
GRADIENT_CASES = [([4, 3], "relu", l2, False) for l2 in (0.0, 0.3)] + [
    (sizes, activation, l2, dropout) for sizes in ([6, 5, 3], [7, 6, 5, 4])
    for activation in ACTIVATIONS
    for l2, dropout in ((0.0, False), (0.3, False), (0.0, True), (0.1, True))]


@pytest.mark.parametrize(("sizes", "activation", "l2", "dropout"), GRADIENT_CASES)
def test_gradients_match_central_finite_differences(sizes, activation, l2, dropout):
    params, x, targets = tiny_problem(sizes)
    masks = dropout_masks(sizes, len(x), seed=2) if dropout else None
    assert not dropout or any((mask == 0).any() for mask in masks)  # some units really dropped
    args = (params, sizes, x, targets, activation, l2, masks)
    grad, numeric = analytic_gradient(*args), numeric_gradient(*args)
    scale = np.abs(numeric).max()
    assert scale > 1e-3  # a vanishing gradient would pass any comparison
    assert np.abs(numeric - grad).max() / scale < 1e-6


def test_weight_decay_leaves_biases_alone():
    sizes = [3, 2]
    params = np.arange(1.0, 9.0)  # W is 3x2 (6 values), then b (2 values)
    grad = np.zeros(8)
    network.add_weight_decay(grad, params, sizes, 0.5)
    np.testing.assert_array_equal(grad, [0.5, 1, 1.5, 2, 2.5, 3, 0, 0])


def test_dropout_masks_silence_units_and_their_gradients():
    sizes = [4, 6, 3]
    params, x, targets = tiny_problem(sizes)
    masks = [np.tile([0.0, 2.0, 0.0, 2.0, 2.0, 0.0], (len(x), 1))]
    grad = analytic_gradient(params, sizes, x, targets, "tanh", 0.0, masks)
    grad_w, grad_b = network.layer_views(grad, sizes)
    dropped = [0, 2, 5]
    assert not grad_w[0][:, dropped].any()
    assert not grad_b[0][dropped].any()
    assert not grad_w[1][dropped, :].any()
    assert grad_w[0][:, [1, 3, 4]].all()


@pytest.mark.parametrize(("activation", "z", "expected", "slope"), [
    ("relu", [-2.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0]),
    ("leaky_relu", [-2.0, 3.0], [-0.02, 3.0], [0.01, 1.0]),
    ("tanh", [0.0, 1.0], [0.0, np.tanh(1.0)], [1.0, 1 - np.tanh(1.0) ** 2]),
    ("sigmoid", [0.0, 2.0, -800.0], [0.5, 1 / (1 + np.exp(-2.0)), 0.0],
     [0.25, np.exp(-2.0) / (1 + np.exp(-2.0)) ** 2, 0.0]),
])
def test_activations_and_slopes_by_hand(activation, z, expected, slope):
    act, act_with_slope = network.ACTIVATIONS[activation]
    a = act(np.array([z]))
    np.testing.assert_allclose(a, [expected], rtol=1e-12, atol=1e-300)
    slope_of = np.empty_like(a)
    trained = act_with_slope(np.array([z]), slope_of)
    np.testing.assert_allclose(trained, [expected], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(slope_of, [slope], rtol=1e-12)


def test_softmax_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [5.0, 5.0, 5.0]])
    probs = network.softmax(logits)
    np.testing.assert_allclose(probs, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-12)
    assert np.isfinite(network.log_softmax(logits)).all()
    delta = network.output_delta(logits.astype(np.float32), np.eye(3, dtype=np.float32)[:2])
    np.testing.assert_allclose(delta, [[0, 0, 0], [1 / 6, -1 / 3, 1 / 6]], atol=1e-7)


def test_output_delta_in_place_of_the_logits():
    logits = np.random.default_rng(0).normal(0, 3, (6, 4))
    targets = np.eye(4)[[0, 1, 2, 3, 0, 1]]
    want = network.output_delta(logits, targets, scale=0.5)
    got = network.output_delta(logits, targets, out=logits, scale=0.5)
    assert got is logits
    np.testing.assert_array_equal(got, want)


def test_output_delta_scales():
    logits = np.array([[np.log(3.0), 0.0]])
    targets = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(network.output_delta(logits, targets, scale=0.5),
                               [[-0.125, 0.125]])


def test_cross_entropy_by_hand():
    logits = np.array([[np.log(3.0), 0.0], [0.0, 0.0]])  # probabilities (3/4, 1/4), (1/2, 1/2)
    targets = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert network.cross_entropy(logits, targets) == pytest.approx(
        -(np.log(0.75) + np.log(0.5)) / 2)


def test_layers_are_views_into_one_vector_weights_first():
    sizes = [3, 2, 4]
    flat = np.arange(network.n_params(sizes), dtype=np.float32)
    weights, biases = network.layer_views(flat, sizes)
    assert network.n_weights(sizes) == 3 * 2 + 2 * 4 == 14
    assert [w.shape for w in weights] == [(3, 2), (2, 4)]
    np.testing.assert_array_equal(weights[1], np.arange(6, 14).reshape(2, 4))
    np.testing.assert_array_equal(biases[0], [14, 15])
    np.testing.assert_array_equal(biases[1], [16, 17, 18, 19])
    weights[0][0, 0] = -1
    assert flat[0] == -1


@pytest.mark.parametrize(("scheme", "std"), [
    ("he", np.sqrt(2 / 784)), ("glorot", np.sqrt(2 / (784 + 500))), ("uniform", np.sqrt(1 / 12)),
])
def test_initialisation_scales_and_zero_biases(scheme, std):
    weights, biases = network.init_layers([784, 500, 10], np.random.default_rng(1), scheme)
    assert [w.shape for w in weights] == [(784, 500), (500, 10)]
    assert all(w.dtype == np.float32 for w in weights + biases)
    assert weights[0].std() == pytest.approx(std, rel=0.02)
    assert abs(weights[0].mean()) < std / 50
    assert not any(b.any() for b in biases)


def test_uniform_and_glorot_bounds():
    (w,), _ = network.init_layers([50, 30], np.random.default_rng(0), "glorot")
    limit = np.sqrt(6 / 80)
    assert -limit <= w.min() < -0.9 * limit
    assert 0.9 * limit < w.max() <= limit
    (w,), _ = network.init_layers([50, 30], np.random.default_rng(0), "uniform")
    assert -0.5 <= w.min() < -0.45
    assert 0.45 < w.max() <= 0.5


def test_forward_keeps_every_layer_and_activates_hidden_only():
    params, x, _ = tiny_problem([4, 6, 3])
    weights, biases = network.layer_views(params, [4, 6, 3])
    outputs, slopes = network.forward(weights, biases, x, "relu")
    assert [o.shape for o in outputs] == [(5, 4), (5, 6), (5, 3)]
    np.testing.assert_array_equal(outputs[1], np.maximum(x @ weights[0] + biases[0], 0))
    np.testing.assert_array_equal(slopes[0], x @ weights[0] + biases[0] > 0)
    assert (outputs[-1] < 0).any()  # logits are not clipped


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_and_backward_into_buffers_equal_allocating_ones(activation):
    sizes = [4, 6, 5, 3]
    params, x, targets = tiny_problem(sizes, batch=7)
    weights, biases = network.layer_views(params, sizes)
    buffers = ([np.full((9, n), np.nan) for n in sizes[1:]],
               [np.full((9, n), np.nan) for n in sizes[1:-1]])
    outputs, slopes = network.forward(weights, biases, x, activation, out=buffers)
    want_outputs, want_slopes = network.forward(weights, biases, x, activation)
    for got, want in zip(outputs + slopes, want_outputs + want_slopes, strict=True):
        np.testing.assert_array_equal(got, want)
    assert outputs[-1].base is buffers[0][-1]

    grads = [np.zeros_like(params), np.zeros_like(params)]
    for grad, deltas, ones in zip(grads, (None, [np.full((9, n), np.nan) for n in sizes[1:]]),
                                  (None, np.ones(9)), strict=True):
        out = None if deltas is None else deltas[-1][: len(x)]
        delta = network.output_delta(outputs[-1], targets, out=out)
        network.backward(weights, outputs, slopes, delta, *network.layer_views(grad, sizes),
                         deltas, ones)
    np.testing.assert_array_equal(grads[0], grads[1])
    assert (grads[0] != 0).mean() > 0.5  # a real gradient, not two untouched zero vectors


def test_backward_with_shrink_takes_the_sgd_step_in_place():
    sizes = [7, 6, 5, 4]  # layers below the top: each must see its weights before the step
    params, x, targets = tiny_problem(sizes, batch=9)
    lr, decay = 0.3, 0.1
    grad = analytic_gradient(params, sizes, x, targets, "tanh", 0.0, None)
    count = network.n_weights(sizes)
    want = params - lr * grad
    want[:count] -= lr * decay * params[:count]
    weights, biases = network.layer_views(params, sizes)
    outputs, slopes = network.forward(weights, biases, x, "tanh")
    delta = network.output_delta(outputs[-1], targets, scale=-lr)
    network.backward(weights, outputs, slopes, delta, weights, biases, shrink=1 - lr * decay)
    np.testing.assert_allclose(params, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shrink", [None, 1.0, 0.97])
@pytest.mark.parametrize("width", [4, 0])  # 0: a batch of blank images
def test_a_narrower_input_stands_for_one_whose_other_columns_are_zero(dtype, shrink, width):
    sizes = [6, 5, 3]
    params, x, targets = tiny_problem(sizes, batch=7)
    params, x, targets = params.astype(dtype), x.astype(dtype), targets.astype(dtype)
    padded = np.zeros_like(x)
    padded[:, :width] = x[:, :width]
    weights, biases = network.layer_views(params, sizes)
    grads = []
    for inputs in (x[:, :width], padded):
        outputs, slopes = network.forward(weights, biases, inputs, "relu")
        delta = network.output_delta(outputs[-1], targets, scale=-0.1)
        grad = params.copy() if shrink else np.full_like(params, np.nan)  # where it adds
        network.backward(weights, outputs, slopes, delta, *network.layer_views(grad, sizes),
                         shrink=shrink)
        grads.append((outputs[-1], grad))
    (narrow_logits, narrow), (logits, full) = grads
    np.testing.assert_allclose(narrow_logits, logits, rtol=1e-6)
    np.testing.assert_allclose(narrow, full, rtol=1e-6, atol=1e-7)
    unused = network.layer_views(narrow, sizes)[0][0][width:]
    want = (0.0 if shrink is None
            else network.layer_views(params, sizes)[0][0][width:] * dtype(shrink))
    np.testing.assert_array_equal(unused, want)
    np.testing.assert_array_equal(unused, network.layer_views(full, sizes)[0][0][width:])


def test_chunked_logits_equal_one_pass():
    sizes = [4, 6, 3]
    params, x, _ = tiny_problem(sizes, batch=25)
    weights, biases = network.layer_views(params.astype(np.float32), sizes)
    x = x.astype(np.float32)
    np.testing.assert_allclose(
        network.logits_in_chunks(weights, biases, x, "leaky_relu", chunk=7),
        network.forward(weights, biases, x, "leaky_relu")[0][-1], rtol=1e-6)


def test_score_is_loss_and_accuracy():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    targets = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    loss, accuracy = network.score(logits, targets)
    assert accuracy == pytest.approx(2 / 3)
    assert loss == pytest.approx(network.cross_entropy(logits, targets))
