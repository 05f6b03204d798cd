import math
import tracemalloc

import numpy as np
import pytest

from stages import optim


def run(optimizer, grads, lr, momentum=0.9, start=(1.0, 2.0)):
    params = np.array(start, np.float64)
    state = optim.init_state(optimizer, len(params))
    for grad in grads:
        optim.OPTIMIZERS[optimizer](params, np.array(grad, np.float64), state, lr, momentum)
    return params


def test_momentum_steps_by_hand():
    # v1 = 1, p1 = 1 - 0.1 * 1; v2 = 0.9 * 1 + 1 = 1.9, p2 = p1 - 0.1 * 1.9
    params = run("momentum", [[1.0, 0.0], [1.0, 0.0]], lr=0.1)
    np.testing.assert_allclose(params, [1 - 0.1 - 0.19, 2.0])


def test_nesterov_steps_by_hand():
    # v1 = 1, p1 = 1 - 0.1 * (1 + 0.9 * 1); v2 = 1.9, p2 = p1 - 0.1 * (1 + 0.9 * 1.9)
    params = run("nesterov", [[1.0, 0.0], [1.0, 0.0]], lr=0.1)
    np.testing.assert_allclose(params, [1 - 0.19 - 0.271, 2.0])


def test_adam_first_step_moves_each_weight_by_lr_against_its_gradient_sign():
    # Bias correction makes m_hat = g and v_hat = g**2 on step 1: the step is lr * g / |g|.
    np.testing.assert_allclose(run("adam", [[2.0, -0.5]], lr=0.01), [0.99, 2.01], rtol=1e-7)


@pytest.mark.parametrize("grads", [
    [[2.0, -0.5], [1.0, 1.0], [-3.0, 0.25], [0.5, 0.0]],
    # Gradients the size of eps, where eps goes changes the step several-fold.
    [[1e-8, -2e-8], [3e-8, 1e-8], [-1e-8, 5e-9]],
])
def test_adam_matches_the_textbook_algorithm_over_several_steps(grads):
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    want, m, v = np.array([1.0, 2.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(map(np.array, grads), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        want = want - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    # The moments are kept in float32, like the parameters they update.
    np.testing.assert_allclose(run("adam", grads, lr=lr), want, rtol=1e-7)


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_a_step_allocates_nothing_the_size_of_the_parameters(name):
    # A float64 temporary, or any whole-vector one, would show in tracemalloc's peak.
    params = np.ones(1_000_000, np.float32)
    grad = np.full(1_000_000, 0.5, np.float32)
    state = optim.init_state(name, len(params))
    tracemalloc.start()
    try:
        optim.OPTIMIZERS[name](params, grad, state, 0.1, 0.9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < params.nbytes / 10
    want = {"momentum": 0.95, "nesterov": 1 - 0.1 * (0.5 + 0.9 * 0.5), "adam": 0.9}
    np.testing.assert_allclose(params[:3], want[name], rtol=1e-6)


@pytest.mark.parametrize(("schedule", "step", "epoch", "want"), [
    ("constant", 999, 9, 0.1),
    ("step", 0, 0, 0.1), ("step", 150, 1, 0.1), ("step", 250, 2, 0.05), ("step", 999, 9, 0.00625),
    ("linear", 0, 0, 0.1), ("linear", 500, 5, 0.055), ("linear", 999, 9, 0.01009),
    ("cosine", 0, 0, 0.1), ("cosine", 500, 5, 0.055),
    ("cosine", 250, 2, 0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2),
])
def test_learning_rate_schedules(schedule, step, epoch, want):
    # 1000 steps over 10 epochs; lr 0.1 falling to lr_min 0.01; step halves it every 2 epochs.
    got = optim.learning_rate(schedule, 0.1, 0.01, step, 1000, epoch, 2, 0.5)
    assert got == pytest.approx(want, rel=1e-9)


def test_linear_decay_to_zero_is_the_reference_schedule():
    # The reference network's gradient descent: lr 0.1 falling linearly over 1000 iterations.
    rates = [optim.learning_rate("linear", 0.1, 0.0, t, 1000, t, 10, 0.5) for t in range(1000)]
    assert rates[0] == 0.1
    assert rates[-1] == pytest.approx(0.0001)
    assert np.allclose(np.diff(rates), -0.0001)


def test_warmup_ramps_up_to_the_schedule_then_leaves_it():
    rates = [optim.learning_rate("cosine", 0.1, 0.0, t, 1000, t // 100, 10, 0.5, 100)
             for t in range(1000)]
    assert rates[0] == pytest.approx(0.1 / 100)
    assert rates[49] == pytest.approx(0.5 * optim.learning_rate("cosine", 0.1, 0.0, 49, 1000, 0,
                                                                10, 0.5))
    assert rates[99:] == [optim.learning_rate("cosine", 0.1, 0.0, t, 1000, t // 100, 10, 0.5)
                          for t in range(99, 1000)]
