import dataclasses
import tracemalloc

import numpy as np
import pytest

from stages import blas, dataset, network, optim, training
from stages.errors import PipelineError
from stages.params import OPTIMIZERS, Train

# Plain SGD at a constant rate unless a test says otherwise: steps a test can compute by hand.
# Spelled out here, so a change of defaults in params.yaml cannot change what these test.
PLAIN = Train(hidden=[10], activation="relu", init="he", optimizer="sgd", momentum=0.9, lr=0.1,
              lr_schedule="constant", lr_min=0.0, lr_step_epochs=10, lr_step_factor=0.5,
              lr_warmup_epochs=0, weight_decay=0.0, epochs=30, batch_size=128, dropout=0.0,
              shift=0, patience=0, seed=0, processes=1)
QUIET = {"log": lambda _: None, "progress": False}


def config(**changes) -> Train:
    return dataclasses.replace(PLAIN, **changes)


def separable_set(n=200, seed=0):
    """Four well-separated Gaussian clusters in 8 dimensions, one per class."""
    rng = np.random.default_rng(seed)
    centres = np.eye(4, 8, dtype=np.float32) * 4
    labels = rng.integers(0, 4, n)
    x = centres[labels] + rng.normal(0, 0.5, (n, 8)).astype(np.float32)
    return x, np.eye(4, dtype=np.float32)[labels]


def fit(sizes, cfg, train_set=None, val_set=None, seed=0):
    params = network.init_params(sizes, cfg.init, np.random.default_rng(seed))
    rngs = tuple(np.random.default_rng(seed + 1).spawn(2))
    history = training.train(params, sizes, train_set or separable_set(),
                             val_set or separable_set(seed=1), cfg, rngs, **QUIET)
    return params, history


def streams(seed):
    """run_epoch's generators as train() makes them: shifts and dropout share one stream."""
    shuffle, noise = np.random.default_rng(seed).spawn(2)
    return shuffle, noise, noise


def grad_of(params, sizes, x, y, activation="relu"):
    buffers = training.make_buffers(sizes, len(x), 0.0, 0.0)
    weights, biases = network.layer_views(params, sizes)
    return training.gradient(weights, biases, x, y, activation, buffers).copy()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_tiny_net_learns_a_separable_set_perfectly(optimizer, activation):
    lr = 0.01 if optimizer == "adam" else 0.1
    cfg = config(optimizer=optimizer, activation=activation, lr=lr, epochs=20, batch_size=16,
                 init="glorot")
    _, history = fit([8, 6, 4], cfg)
    assert [row["epoch"] for row in history] == list(range(1, 21))
    assert history[-1]["train_acc"] == 1.0
    assert history[-1]["val_acc"] == 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2


def test_softmax_regression_has_no_hidden_layer():
    params, history = fit([8, 4], config(hidden=[], epochs=10, batch_size=16))
    assert len(params) == 8 * 4 + 4
    assert history[-1]["val_acc"] == 1.0


def test_one_full_batch_epoch_is_one_gradient_descent_step():
    x, y = separable_set(n=32)
    sizes = [8, 5, 4]
    params = network.init_params(sizes, "he", np.random.default_rng(3))
    expected = params - 0.5 * grad_of(params, sizes, x, y)
    cfg = config(lr=0.5, batch_size=len(x))
    buffers = training.make_buffers(sizes, len(x), 0.0, 0.0)
    rngs = streams(9)
    lr = training.run_epoch(params, sizes, x, y, cfg, buffers, optim.init_state("sgd", 0),
                            lambda _: 0.5, 0, rngs)
    assert lr == 0.5
    np.testing.assert_allclose(params, expected, rtol=1e-5, atol=1e-7)


def test_the_last_partial_batch_is_used():
    x, y = separable_set(n=10)
    sizes = [8, 4]
    params = network.init_params(sizes, "he", np.random.default_rng(0))
    want = params.copy()
    rngs = streams(0)
    order = np.random.default_rng(0).spawn(2)[0].permutation(10)
    # 10 rows in batches of 9: one step on 9 rows, then one on the leftover row.
    for rows in (order[:9], order[9:]):
        want -= 0.1 * grad_of(want, sizes, x[rows], y[rows])
    buffers = training.make_buffers(sizes, 9, 0.0, 0.0)
    training.run_epoch(params, sizes, x, y, config(batch_size=9), buffers,
                       optim.init_state("sgd", 0), lambda _: 0.1, 0, rngs)
    np.testing.assert_allclose(params, want, rtol=1e-5, atol=1e-7)


def digit_like_set(n=150, seed=0):
    """Random 28x28 uint8 "images" as preprocess writes them, with labels from their ink."""
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = images.reshape(n, -1).sum(axis=1) % 4
    return images, dataset.normalise(images), np.eye(4, dtype=np.float32)[labels]


def test_compact_pixels_gives_the_codes_of_exactly_scaled_pixels(monkeypatch):
    monkeypatch.setattr(training, "CHECK_ROWS", 64)  # three chunks, the last one short
    images, x, _ = digit_like_set()
    codes = training.compact_pixels(x)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, images.reshape(len(x), -1))
    one_off = x.copy()
    one_off[-1, -1] = np.nextafter(one_off[-1, -1], np.float32(2))  # in the last chunk
    for other in (one_off, x * np.float32(0.999), x * 2, -x, np.full_like(x, np.nan)):
        assert training.compact_pixels(other) is other


@pytest.mark.parametrize("batch_size", [32, 64])  # 150 rows: a short last batch with 64
@pytest.mark.parametrize("shift", [0, 2])
def test_an_epoch_on_pixel_codes_equals_one_on_their_floats(batch_size, shift):
    _, x, y = digit_like_set()
    codes = training.compact_pixels(x)
    assert codes.dtype == np.uint8
    sizes = [784, 16, 4]
    start = network.init_params(sizes, "he", np.random.default_rng(1))
    cfg = config(batch_size=batch_size, shift=shift)
    trained = []
    for pixels in (x, codes):
        params = start.copy()
        training.run_epoch(params, sizes, pixels, y, cfg,
                           training.make_buffers(sizes, batch_size, 0.0, 0.0),
                           optim.init_state("sgd", 0), lambda _: 0.1, 0,
                           streams(2))
        trained.append(params)
    assert not np.array_equal(trained[0], start)
    assert trained[0].tobytes() == trained[1].tobytes()


def sgd_epoch(sizes, x, y, weight_decay=0.0):
    params = network.init_params(sizes, "he", np.random.default_rng(1))
    cfg = config(batch_size=64, weight_decay=weight_decay)
    buffers = training.make_buffers(sizes, 64, 0.0, weight_decay, with_gradient=False)
    training.run_epoch(params, sizes, x, y, cfg, buffers, {}, lambda _: 0.1, 0,
                       streams(2))
    return params


@pytest.mark.skipif(blas.SGEMM is None, reason="NumPy here has no bundled OpenBLAS")
def test_sgd_steps_through_blas_equal_those_through_numpy_bit_for_bit(monkeypatch):
    _, x, y = digit_like_set()
    sizes = [784, 32, 4]  # the first layer's 784 x 32 weights go through BLAS
    assert blas.MIN_BLAS_OUTPUTS <= 784 * 32
    through_blas = sgd_epoch(sizes, x, y, weight_decay=0.01)
    monkeypatch.setattr(blas, "SGEMM", None)
    assert through_blas.tobytes() == sgd_epoch(sizes, x, y, weight_decay=0.01).tobytes()
    assert not np.array_equal(through_blas, sgd_epoch(sizes, x, y))  # the decay counts


@pytest.mark.skipif(blas.SGEMM is None, reason="NumPy here has no bundled OpenBLAS")
def test_an_sgd_step_allocates_nothing_the_size_of_the_weights():
    _, x, y = digit_like_set(n=64)
    sizes = [784, 256, 4]
    params = network.init_params(sizes, "he", np.random.default_rng(0))
    weights, biases = network.layer_views(params, sizes)
    buffers = training.make_buffers(sizes, 64, 0.0, 0.0)
    tracemalloc.start()
    try:
        training.sgd_step(weights, biases, x, y, "relu", buffers, None, 0.1, 0.01)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < weights[0].nbytes / 10


def test_weight_decay_is_the_l2_gradient_added_to_the_step():
    x, y = separable_set(n=32)
    sizes = [8, 5, 4]
    params = network.init_params(sizes, "he", np.random.default_rng(3))
    grad = grad_of(params, sizes, x, y)
    count = network.n_weights(sizes)
    grad[:count] += 0.01 * params[:count]
    expected = params - 0.5 * grad
    for optimizer in ("sgd", "momentum"):  # decay through GEMM's beta, and as a gradient
        got = params.copy()
        cfg = config(lr=0.5, batch_size=len(x), weight_decay=0.01, optimizer=optimizer)
        training.run_epoch(got, sizes, x, y, cfg, training.make_buffers(sizes, 32, 0.0, 0.01),
                           optim.init_state(optimizer, len(got)), lambda _: 0.5, 0,
                           streams(0))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_dropout_masks_are_zero_or_the_inverse_keep_rate():
    masks = [np.empty((1000, 50), np.float32)]
    training.draw_masks(masks, 1000, 0.2, np.random.default_rng(0))
    assert set(np.unique(masks[0])) == {0.0, np.float32(1 / 0.8)}
    assert (masks[0] == 0).mean() == pytest.approx(0.2, abs=0.01)
    assert masks[0].mean() == pytest.approx(1.0, abs=0.02)


def test_dropout_and_shift_change_training_but_stay_deterministic():
    x = np.random.default_rng(0).random((64, 16), dtype=np.float32)  # 4x4 "images"
    y = np.eye(4, dtype=np.float32)[np.arange(64) % 4]
    plain = fit([16, 8, 4], config(epochs=2, batch_size=16), (x, y), (x, y))[0]
    for change in ({"dropout": 0.5}, {"shift": 1}):
        cfg = config(epochs=2, batch_size=16, **change)
        once, again = fit([16, 8, 4], cfg, (x, y), (x, y))[0], fit([16, 8, 4], cfg, (x, y),
                                                                   (x, y))[0]
        assert once.tobytes() == again.tobytes()
        assert once.tobytes() != plain.tobytes()


def test_dropout_and_shift_draw_from_their_own_stream_not_the_batch_order(monkeypatch):
    orders = []
    real_gather = training.gather

    def recording_gather(x, y, rows, buffers, width=None):
        orders[-1].append(rows.copy())
        return real_gather(x, y, rows, buffers, width)

    monkeypatch.setattr(training, "gather", recording_gather)
    x = np.random.default_rng(0).random((100, 784), np.float32)  # 28x28 images, for shift
    y = np.eye(10, dtype=np.float32)[np.arange(100) % 10]
    for change in ({}, {"dropout": 0.5}, {"shift": 2}):
        orders.append([])
        fit([784, 16, 10], config(epochs=2, batch_size=32, **change), (x, y), (x, y))
    assert len(orders[0]) == 8  # 4 batches an epoch
    for other in orders[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(orders[0], other, strict=True))


def test_the_training_curve_scores_training_rows():
    x, y = separable_set(n=200)
    noisy_val = (x + np.random.default_rng(5).normal(0, 2.0, x.shape).astype(np.float32), y)
    params, history = fit([8, 6, 4], config(epochs=3, batch_size=16), (x, y), noisy_val)
    train_loss, train_acc = training.scores(params, [8, 6, 4], "relu", (x, y))
    assert (history[-1]["train_loss"], history[-1]["train_acc"]) == (train_loss, train_acc)
    assert history[-1]["val_loss"] != train_loss


def test_same_seed_same_weights_other_seed_other_weights():
    cfg = config(epochs=2, batch_size=16)
    assert fit([8, 6, 4], cfg, seed=0)[0].tobytes() == fit([8, 6, 4], cfg, seed=0)[0].tobytes()
    assert fit([8, 6, 4], cfg, seed=0)[0].tobytes() != fit([8, 6, 4], cfg, seed=1)[0].tobytes()


def test_history_records_the_scheduled_learning_rate():
    # 200 rows in batches of 50: 4 steps an epoch, 16 in all, falling linearly from 0.1 to 0.
    cfg = config(epochs=4, batch_size=50, lr_schedule="linear", lr_min=0.0)
    _, history = fit([8, 6, 4], cfg)
    assert [row["lr"] for row in history] == pytest.approx([0.08125, 0.05625, 0.03125, 0.00625])


def test_every_step_gets_the_rate_of_its_epoch_after_a_warmup_epoch(monkeypatch):
    rates = []
    real_step = training.sgd_step

    def recording_step(*args):
        rates.append(args[-3])  # sgd_step(..., lr, weight_decay, combine)
        real_step(*args)

    monkeypatch.setattr(training, "sgd_step", recording_step)
    # 200 rows in batches of 50: 4 steps an epoch. The first epoch ramps up to 0.1, then the
    # rate halves every 2 epochs, counted from the first.
    cfg = config(epochs=5, batch_size=50, lr_schedule="step", lr_step_epochs=2,
                 lr_step_factor=0.5, lr_warmup_epochs=1)
    _, history = fit([8, 6, 4], cfg)
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1] + [0.1] * 4 + [0.05] * 8
                                  + [0.025] * 4)
    assert [row["lr"] for row in history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_early_stopping_keeps_the_best_epochs_weights():
    x, y = separable_set(n=200)
    noisy_val = (x[:60] + np.random.default_rng(5).normal(0, 2.0, (60, 8)).astype(np.float32),
                 y[:60])
    cfg = config(epochs=40, batch_size=16, patience=3)
    params, history = fit([8, 6, 4], cfg, (x, y), noisy_val)
    accuracies = [row["val_acc"] for row in history]
    best_epoch = accuracies.index(max(accuracies)) + 1
    assert len(history) == best_epoch + 3 < 40
    rerun, _ = fit([8, 6, 4], config(epochs=best_epoch, batch_size=16), (x, y), noisy_val)
    assert params.tobytes() == rerun.tobytes()


def test_divergence_stops_with_a_hint_about_the_learning_rate():
    x, y = separable_set()
    with pytest.raises(PipelineError, match=r"diverged in epoch 1 .*train\.lr below 1000"):
        fit([8, 6, 4], config(lr=1000.0, epochs=3, batch_size=16), (x * 1e4, y))


def test_buffers_hold_a_full_batch_for_every_layer():
    buffers = training.make_buffers([784, 32, 16, 10], 64, 0.5, 0.0)
    assert buffers.x.shape == (64, 784)
    assert [a.shape for a in buffers.outputs] == [(64, 32), (64, 16), (64, 10)]
    assert [a.shape for a in buffers.slopes] == [(64, 32), (64, 16)]
    assert [a.shape for a in buffers.masks] == [(64, 32), (64, 16)]
    assert buffers.grad.size == network.n_params([784, 32, 16, 10])
    assert buffers.decay is None


def test_buffers_for_plain_sgd_hold_no_gradient():
    x, y = separable_set(n=8)
    sizes = [8, 5, 4]
    buffers = training.make_buffers(sizes, 8, 0.0, 0.01, with_gradient=False)
    assert buffers.grad is None
    assert buffers.decay is None
    params = network.init_params(sizes, "he", np.random.default_rng(0))
    weights, biases = network.layer_views(params, sizes)
    with pytest.raises(ValueError, match="gradient\\(\\) needs buffers made with_gradient"):
        training.gradient(weights, biases, x, y, "relu", buffers)


def inked_digit_set(n=120, seed=0):
    """uint8 "images" as preprocess writes them, each inked only within a random box (a tenth
    blank): the columns a batch uses vary, and many are zero in all."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for image in images[n // 10 :]:
        top, left = rng.integers(0, 20, 2)
        height, width = rng.integers(1, 9, 2)
        image[top : top + height, left : left + width] = rng.integers(
            1, 256, (height, width), dtype=np.uint8)
    labels = rng.integers(0, 4, n)
    return dataset.normalise(images), np.eye(4, dtype=np.float32)[labels]


def test_zero_tails_put_the_most_used_columns_first_dealt_to_each_part(monkeypatch):
    monkeypatch.setattr(training, "CHECK_ROWS", 2)  # counted in two blocks of rows
    used = np.array([[0, 1, 0, 1, 1], [0, 1, 0, 1, 1], [1, 1, 0, 1, 0]], np.uint8) * 9
    # Columns used 1, 3, 0, 3 and 2 times: 1 and 3 (in that order), 4, 0, then 2.
    np.testing.assert_array_equal(training.zero_tails(used, 1), [1, 3, 4, 0, 2])
    np.testing.assert_array_equal(training.zero_tails(used, 2), [1, 4, 2, 3, 0])


def test_columns_are_reordered_in_place_a_block_of_rows_at_a_time(monkeypatch):
    monkeypatch.setattr(training, "CHECK_ROWS", 2)
    codes = np.arange(15, dtype=np.uint8).reshape(5, 3)
    want = codes[:, [2, 0, 1]]
    memory = codes.ctypes.data
    training.reorder_columns(codes, np.array([2, 0, 1]))
    np.testing.assert_array_equal(codes, want)
    assert codes.ctypes.data == memory


def test_row_ends_are_one_past_each_rows_last_nonzero_column(monkeypatch):
    monkeypatch.setattr(training, "CHECK_ROWS", 2)  # two chunks
    codes = np.array([[0, 0, 0], [5, 0, 0], [0, 0, 7], [1, 2, 0]], np.uint8)
    np.testing.assert_array_equal(training.row_ends(codes), [0, 1, 3, 2])


@pytest.mark.parametrize("width", [0, 3, 784])
def test_a_trimmed_batch_is_the_leading_columns_of_its_rows(width):
    x, y = inked_digit_set()
    codes = training.compact_pixels(x)
    buffers = training.make_buffers([784, 5, 4], 8, 0.0, 0.0)
    rows = np.array([7, 3, 99])
    xb, yb = training.gather(codes, y, rows, buffers, width)
    assert xb.shape == (3, width)
    assert xb.flags.c_contiguous
    assert np.shares_memory(xb, buffers.x) or width == 0
    np.testing.assert_array_equal(xb, x[rows, :width])
    np.testing.assert_array_equal(yb, y[rows])


@pytest.mark.parametrize(("optimizer", "decay", "patience"), [
    ("sgd", 0.0, 0), ("sgd", 1e-3, 0), ("nesterov", 1e-3, 3)])
def test_trimmed_batches_train_the_model_untrimmed_ones_do(monkeypatch, optimizer, decay,
                                                           patience):
    x, y = inked_digit_set()
    val = inked_digit_set(seed=1)  # on which, with patience, the second of 3 epochs is kept
    sizes = [784, 32, 4]  # W1 large enough for blas.matmul_tn's BLAS path
    cfg = config(optimizer=optimizer, weight_decay=decay, epochs=3, batch_size=16,
                 patience=patience)
    widths = []
    real_gather = training.gather

    def recording_gather(x, y, rows, buffers, width=None):
        widths.append(width)
        return real_gather(x, y, rows, buffers, width)

    monkeypatch.setattr(training, "gather", recording_gather)
    (trimmed, history), again = fit(sizes, cfg, (x, y), val), fit(sizes, cfg, (x, y), val)[0]
    assert trimmed.tobytes() == again.tobytes()
    assert all(width < 784 for width in widths)
    assert len(set(widths)) > 3
    monkeypatch.setattr(training, "trims", lambda config, x: False)
    widths.clear()
    untrimmed, untrimmed_history = fit(sizes, cfg, (x, y), val)
    assert set(widths) == {None}
    # Every epoch is scored on the network in its own order.
    for row, want in zip(history, untrimmed_history, strict=True):
        assert row == pytest.approx(want, rel=1e-4)
    # The same model in the same order, up to the order of the products' sums; exactly the
    # same for pixels no image uses.
    np.testing.assert_allclose(trimmed, untrimmed, rtol=1e-5, atol=1e-6)
    unused = ~(x != 0).any(axis=0)
    assert unused.sum() > 100
    w1 = [network.layer_views(params, sizes)[0][0] for params in (trimmed, untrimmed)]
    np.testing.assert_array_equal(w1[0][unused], w1[1][unused])
    init_w1 = network.layer_views(network.init_params(sizes, "he", np.random.default_rng(0)),
                                  sizes)[0][0]
    assert np.array_equal(w1[0][unused], init_w1[unused]) == (decay == 0)


def test_batches_are_trimmed_for_pixel_codes_without_shifts():
    x, _ = inked_digit_set()
    codes = training.compact_pixels(x)
    assert training.trims(PLAIN, codes)
    assert not training.trims(config(shift=1), codes)
    assert not training.trims(PLAIN, x)
