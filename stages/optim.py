"""Optimisers with state, and learning-rate schedules, on the network's flat parameter vector.
(Plain SGD has no state: training.sgd_step takes it inside backprop's products.)

Each optimiser updates `params` in place from `grad` and its own `state` (buffers made once by
`init_state`), with whole-vector operations into preallocated memory. They consume `grad`: its
contents are overwritten, as it is recomputed every step anyway.
"""

import math

import numpy as np

ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8  # Kingma & Ba's defaults

State = dict[str, np.ndarray]


def init_state(optimizer: str, size: int) -> State:
    zeros = {"sgd": (), "momentum": ("velocity",), "nesterov": ("velocity", "scratch"),
             "adam": ("mean", "variance", "scratch")}[optimizer]
    state = {name: np.zeros(size, np.float32) for name in zeros}
    state["steps"] = np.zeros((), np.int64)
    return state


def heavy_ball(params: np.ndarray, grad: np.ndarray, state: State, lr: float,
               momentum: float) -> None:
    """v = momentum * v + g;  p -= lr * v"""
    velocity = state["velocity"]
    velocity *= momentum
    velocity += grad
    np.multiply(velocity, lr, out=grad)
    params -= grad


def nesterov(params: np.ndarray, grad: np.ndarray, state: State, lr: float,
             momentum: float) -> None:
    """v = momentum * v + g;  p -= lr * (g + momentum * v): the step looks ahead along v."""
    velocity, scratch = state["velocity"], state["scratch"]
    velocity *= momentum
    velocity += grad
    np.multiply(velocity, momentum, out=scratch)
    grad += scratch
    grad *= lr
    params -= grad


def adam(params: np.ndarray, grad: np.ndarray, state: State, lr: float, momentum: float) -> None:
    """m and v are running means of g and g**2; the step is lr * m_hat / (sqrt(v_hat) + eps),
    where the hats undo the bias of starting both at zero."""
    mean, variance, scratch = state["mean"], state["variance"], state["scratch"]
    state["steps"] += 1
    t = int(state["steps"])
    np.multiply(grad, grad, out=scratch)
    scratch *= 1 - ADAM_BETA2
    variance *= ADAM_BETA2
    variance += scratch
    grad *= 1 - ADAM_BETA1
    mean *= ADAM_BETA1
    mean += grad
    # m_hat / (sqrt(v_hat) + eps) with the two corrections gathered into scalars.
    step_size = lr * math.sqrt(1 - ADAM_BETA2**t) / (1 - ADAM_BETA1**t)
    np.sqrt(variance, out=scratch)
    scratch += ADAM_EPS * math.sqrt(1 - ADAM_BETA2**t)
    np.divide(mean, scratch, out=scratch)
    scratch *= step_size
    params -= scratch


OPTIMIZERS = {"momentum": heavy_ball, "nesterov": nesterov, "adam": adam}


def learning_rate(
    schedule: str, lr: float, lr_min: float, step: int, total_steps: int,
    epoch: int, step_epochs: int, step_factor: float, warmup_steps: int = 0,
) -> float:
    """The learning rate for `step` (0-based, of `total_steps`) within `epoch` (0-based).
    The first `warmup_steps` ramp linearly up to the schedule: a large first step can push
    ReLU units where no input activates them, and they never recover."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warmup * scheduled_rate(schedule, lr, lr_min, step / total_steps,
                                   epoch, step_epochs, step_factor)


def scheduled_rate(schedule: str, lr: float, lr_min: float, progress: float, epoch: int,
                   step_epochs: int, step_factor: float) -> float:
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * step_factor ** (epoch // step_epochs)
    if schedule == "linear":
        return lr + (lr_min - lr) * progress
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")
