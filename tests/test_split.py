"""train.processes: 2, hidden units split between two processes."""

import dataclasses
import multiprocessing
import os
import signal
import time
from functools import partial

import numpy as np
import pytest
from test_stage_commands import TRAIN_ARGS, project, run_stage, set_param  # noqa: F401
from test_training import config, digit_like_set, fit, inked_digit_set, separable_set

from stages import blas, network, split, training
from stages.errors import PipelineError

needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="the split needs two CPUs")


def test_the_plan_splits_narrow_layers_by_inputs_and_wide_ones_or_shifts_by_units():
    assert split.plan([784, 10, 10], shift=0) == split.Plan("inputs", (slice(0, 392),
                                                                       slice(392, 784)))
    assert split.plan([784, 127, 10], shift=0).by == "inputs"
    assert split.plan([784, 128, 10], shift=0) == split.Plan("units", (slice(0, 64),
                                                                      slice(64, 128)))
    assert split.plan([784, 10, 10], shift=1) == split.Plan("units", (slice(0, 5), slice(5, 10)))
    assert split.plan([7, 5, 3], shift=1).halves == (slice(0, 3), slice(3, 5))


def test_halves_give_each_process_its_units_and_join_puts_them_back():
    sizes = [6, 5, 3]
    params = np.random.default_rng(0).standard_normal(network.n_params(sizes)).astype(np.float32)
    (w1, w2), (b1, b2) = network.layer_views(params, sizes)
    units = split.Plan("units", (slice(0, 3), slice(3, 5)))
    parts = split.halves(params, sizes, units)
    for part, half, width in zip(parts, units.halves, (3, 2), strict=True):
        (part_w1, part_w2), (part_b1, part_b2) = network.layer_views(part, [6, width, 3])
        assert np.array_equal(part_w1, w1[:, half])
        assert np.array_equal(part_w2, w2[half])
        assert np.array_equal(part_b1, b1[half])
        assert np.array_equal(part_b2, b2)
    joined = np.zeros_like(params)
    split.join(joined, sizes, parts, units)
    assert joined.tobytes() == params.tobytes()


def test_halves_give_each_process_its_inputs_and_join_puts_them_back():
    sizes = [7, 5, 3]
    params = np.random.default_rng(0).standard_normal(network.n_params(sizes)).astype(np.float32)
    (w1, w2), (b1, b2) = network.layer_views(params, sizes)
    inputs = split.plan(sizes, shift=0)
    parts = split.halves(params, sizes, inputs)
    for part, half, width in zip(parts, (slice(0, 4), slice(4, 7)), (4, 3), strict=True):
        (part_w1, part_w2), (part_b1, part_b2) = network.layer_views(part, [width, 5, 3])
        assert np.array_equal(part_w1, w1[half])
        assert np.array_equal(part_w2, w2)
        assert np.array_equal(part_b1, b1)
        assert np.array_equal(part_b2, b2)
    joined = np.zeros_like(params)
    split.join(joined, sizes, parts, inputs)
    assert joined.tobytes() == params.tobytes()


def link(me, published_by_other=0, alive=True):
    counters = np.zeros(split.ABORT + 1, np.int64)
    counters[(1 - me) * split.STRIDE] = published_by_other
    return split.Link(me, counters, np.zeros((2, 2, 4, 3), np.float32), lambda: alive)


def test_both_processes_add_the_parts_in_one_order_to_the_same_bits():
    rng = np.random.default_rng(1)
    part0, part1, bias = (rng.standard_normal(shape).astype(np.float32) * 1e4
                          for shape in ((4, 3), (4, 3), 3))
    first, second = link(0, published_by_other=1), link(1, published_by_other=1)
    first.parts[1, 1], second.parts[0, 1] = part1, part0  # what the other published
    got0, got1 = split.combine(first, part0, bias), split.combine(second, part1, bias)
    assert got0.tobytes() == got1.tobytes() == ((part0 + part1) + bias).tobytes()
    assert first.counters[0] == 1
    assert np.array_equal(first.parts[0, 1], part0)


@pytest.mark.parametrize("counters_say", ["abort", "partner gone"])
def test_waiting_stops_when_the_other_process_has(counters_say):
    waiting = link(0, alive=counters_say != "partner gone")
    waiting.counters[split.ABORT] = counters_say == "abort"
    started = time.perf_counter()
    with pytest.raises(split.PartnerGoneError):
        split.wait(waiting, 1)
    assert time.perf_counter() - started < 1


@needs_two_cpus
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize(("by", "change"), [
    ("units", {"shift": 2}),  # which both processes must draw alike
    ("units", {}),  # each trimming its batches
    ("inputs", {"dropout": 0.3}),  # whose masks both must draw alike
])
def test_split_training_follows_one_process_training(monkeypatch, optimizer, by, change):
    # The same steps up to the order of the sums, with weight decay, which each process
    # applies to its own weights (and both to those they share). Each trims its batches (by
    # inputs, to its own half's columns).
    x, y = inked_digit_set(n=96)
    cfg = config(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.1, epochs=2,
                 batch_size=16, weight_decay=1e-3, **change)
    if by == "units":
        monkeypatch.setattr(split, "UNITS_FROM", 4)  # the plan is made in this process
    assert split.plan([784, 7, 4], cfg.shift).by == by
    alone, history = fit([784, 7, 4], cfg, (x, y), (x, y))
    both, split_history = fit([784, 7, 4], dataclasses.replace(cfg, processes=2), (x, y), (x, y))
    assert not np.array_equal(alone, network.init_params([784, 7, 4], "he",
                                                         np.random.default_rng(0)))
    np.testing.assert_allclose(both, alone, rtol=1e-4, atol=1e-5)
    assert split_history[-1]["train_loss"] == pytest.approx(history[-1]["train_loss"], rel=1e-4)


@needs_two_cpus
def test_split_training_with_dropout_by_units_is_deterministic():
    _, x, y = digit_like_set(n=96)
    cfg = config(epochs=2, batch_size=16, dropout=0.3, shift=1, processes=2)
    assert split.plan([784, 7, 4], cfg.shift).by == "units"
    first, _ = fit([784, 7, 4], cfg, (x, y), (x, y))
    assert fit([784, 7, 4], cfg, (x, y), (x, y))[0].tobytes() == first.tobytes()
    other = fit([784, 7, 4], dataclasses.replace(cfg, dropout=0.0), (x, y), (x, y))[0]
    assert other.tobytes() != first.tobytes()


CFG = config(hidden=[6], epochs=1, batch_size=16, processes=2)


def runner(failure, params, sizes, x, y, rngs, combine):
    """training.epoch_runner, with a failure planted in one process."""
    me = combine[1].args[0].me
    if me == 1 and failure == "start":
        raise ValueError("planted at start")
    run = training.epoch_runner(CFG, partial(training.learning_rate_at, CFG, 13), params, sizes,
                                x, y, rngs, combine)

    def failing(first_step, bar):
        if me == 1 and failure == "epoch":
            raise ValueError("planted in an epoch")
        if me == 0 and failure == "killed":
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
        return run(first_step, bar)

    return failing


@needs_two_cpus
@pytest.mark.parametrize(("failure", "message"), [
    ("start", "the second training process failed: ValueError: planted at start"),
    ("epoch", "the second training process failed: ValueError: planted in an epoch"),
    ("killed", "the second training process stopped (exit code -9)"),
])
def test_a_failing_second_process_is_one_error_and_leaves_things_as_they_were(failure, message):
    x, y = separable_set()
    params = network.init_params([8, 6, 4], "he", np.random.default_rng(0))
    threads = blas.OPENBLAS.scipy_openblas_get_num_threads64_() if blas.OPENBLAS else None
    cpus = os.sched_getaffinity(0)
    started = time.perf_counter()
    # The failure may come as the context starts or in the epoch.
    with (pytest.raises(PipelineError) as caught,
          split.two_processes(partial(runner, failure), params, [8, 6, 4], x, y, 16, 0,
                              tuple(np.random.default_rng(0).spawn(2))) as run):
        run(0, None)
    assert str(caught.value) == message
    assert time.perf_counter() - started < 20
    assert not multiprocessing.active_children()
    assert os.sched_getaffinity(0) == cpus
    if blas.OPENBLAS:
        assert blas.OPENBLAS.scipy_openblas_get_num_threads64_() == threads


@needs_two_cpus
def test_the_split_keeps_one_blas_thread_and_a_cpu_each_and_gives_them_back():
    x, y = separable_set()
    params = network.init_params([8, 6, 4], "he", np.random.default_rng(0))
    cpus = os.sched_getaffinity(0)
    with split.two_processes(partial(runner, None), params, [8, 6, 4], x, y, 16, 0,
                             tuple(np.random.default_rng(0).spawn(2))) as run:
        run(0, None)
        assert os.sched_getaffinity(0) == {min(cpus)}
        if blas.OPENBLAS:
            assert blas.OPENBLAS.scipy_openblas_get_num_threads64_() == 1
    assert os.sched_getaffinity(0) == cpus


def test_the_split_needs_two_cpus_on_linux_x86_64(monkeypatch):
    monkeypatch.setattr(split.platform, "machine", lambda: "arm64")
    with pytest.raises(PipelineError, match=r"runs on Linux x86-64 only .*, not \w+ on arm64"):
        split.two_cpus()
    monkeypatch.setattr(split.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(split.os, "sched_getaffinity", lambda _: {3})
    with pytest.raises(PipelineError, match="needs two CPUs, this process may use one"):
        split.two_cpus()
    monkeypatch.setattr(split.os, "sched_getaffinity", lambda _: {3, 1})
    assert split.two_cpus() == [1, 3]
    monkeypatch.setattr(split.blas, "OPENBLAS", None)
    with pytest.raises(PipelineError, match="needs the OpenBLAS bundled with NumPy's wheels"):
        split.two_cpus()


@needs_two_cpus
def test_a_second_process_gone_between_epochs_is_one_error():
    x, y = separable_set()
    params = network.init_params([8, 6, 4], "he", np.random.default_rng(0))
    with (pytest.raises(PipelineError) as caught,  # noqa: PT012
          split.two_processes(partial(runner, None), params, [8, 6, 4], x, y, 16, 0,
                              tuple(np.random.default_rng(0).spawn(2))) as run):
        run(0, None)
        (child,) = multiprocessing.active_children()
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        run(13, None)
    assert str(caught.value) == "the second training process stopped (exit code -9)"


@needs_two_cpus
def test_the_train_stage_runs_split(project):  # noqa: F811
    # Run as `python -m stages.train`, whose module the second process must not re-run.
    set_param(project, "train", "hidden", [8])
    set_param(project, "train", "processes", 2)
    set_param(project, "train", "batch_size", 4)
    result = run_stage(project, "train", *TRAIN_ARGS)
    assert result.returncode == 0, result.stderr
    assert "trained 784-8-10" in result.stdout
    assert (project / "out" / "model.npz").exists()


def test_the_second_cpu_is_on_another_core_where_linux_says(monkeypatch):
    monkeypatch.setattr(split.os, "sched_getaffinity", lambda _: {0, 1, 2})
    cores = {0: ("0", "0"), 1: ("0", "0"), 2: ("0", "1")}  # 0 and 1: one core's two threads
    monkeypatch.setattr(split, "core_of", cores.get)
    assert split.two_cpus() == [0, 2]
    monkeypatch.setattr(split, "core_of", lambda _: None)
    assert split.two_cpus() == [0, 1]
    assert split.core_of(10**6) is None


@needs_two_cpus
def test_a_second_process_not_ready_in_time_is_one_error(monkeypatch):
    monkeypatch.setattr(split, "START_SECONDS", 0)
    x, y = separable_set()
    params = network.init_params([8, 6, 4], "he", np.random.default_rng(0))
    with (pytest.raises(PipelineError, match=r"^the second training process was not ready "
                                             r"after 0 s$"),
          split.two_processes(partial(runner, None), params, [8, 6, 4], x, y, 16, 0,
                              tuple(np.random.default_rng(0).spawn(2)))):
        pass
    assert not multiprocessing.active_children()


@needs_two_cpus
def test_ctrl_c_is_left_to_the_first_process():
    x, y = separable_set()
    params = network.init_params([8, 6, 4], "he", np.random.default_rng(0))
    with split.two_processes(partial(runner, None), params, [8, 6, 4], x, y, 16, 0,
                             tuple(np.random.default_rng(0).spawn(2))) as run:
        (child,) = multiprocessing.active_children()
        os.kill(child.pid, signal.SIGINT)
        run(0, None)
        assert child.is_alive()
    assert child.exitcode == 0


@needs_two_cpus
def test_the_first_process_gets_all_its_cpus_back(monkeypatch):
    pinned = []
    monkeypatch.setattr(split.os, "sched_getaffinity", lambda _: {0, 1, 5})
    monkeypatch.setattr(split.os, "sched_setaffinity", lambda pid, cpus: pinned.append(set(cpus)))
    monkeypatch.setattr(split, "core_of", lambda _: None)
    x, y = separable_set()
    params = network.init_params([8, 6, 4], "he", np.random.default_rng(0))
    with split.two_processes(partial(runner, None), params, [8, 6, 4], x, y, 16, 0,
                             tuple(np.random.default_rng(0).spawn(2))) as run:
        run(0, None)
    assert pinned == [{0}, {0, 1, 5}]
