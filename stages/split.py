"""Training split between two processes (train.processes: 2), for one hidden layer.

NumPy's OpenBLAS splits a matrix product between its two threads along the larger output
dimension: the forward product a @ W1 by hidden units, the update of W1 by input rows. So half
of W1 moves between the cores twice a step, and where the two cores share no cache that
traffic costs a third of a 784-256-10 step. Here each process owns half of W1 in its own memory
and runs BLAS on one thread, and per step the two swap one small array through shared memory.
Two ways to halve W1, by what each process takes:

- "units", for 128 hidden units or more: half the hidden units, that is its columns of W1, its
  rows of W2 and its entries of b1. Each gathers the whole batch; they swap their parts of the
  logits (the units' a @ W2, batch x classes). Each draws its own units' dropout masks.
- "inputs", for narrower layers: half the pixels, that is its rows of W1. Each gathers only its
  half of the batch's pixels (the gather is a fifth of a 784-10-10 step), dealt to it by
  training.zero_tails so that both halves trim alike; they swap their parts of the hidden
  layer's input (the pixels' x @ W1, batch x units), and both then compute the rest of the
  network alike. Shifts move pixels between the halves, so they need "units".

Both processes add part 0, part 1 and the bias, to the same bits, so every array both hold (b2;
with "inputs" also b1, W2 and the dropout masks, drawn from one stream) stays the same in both
and needs no other exchange. Without dropout, or with "inputs", the model is the one-process
model up to the rounding of that sum; with "units" and dropout, the masks differ.

A process waits for the other's part by spinning on its step counter: a 784-256-10 step takes
about 250 us and waking a sleeping process would take 150 us here. Spinning needs a CPU for
each process; reading the part once the counter shows it needs stores that other cores see in
the order they were made, which x86-64 guarantees.
"""

import contextlib
import ctypes
import math
import mmap
import multiprocessing
import os
import platform
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from stages import blas, network
from stages.errors import PipelineError

STRIDE = 16  # int64s between the two step counters: 128 bytes, never one cache line
ABORT = 2 * STRIDE  # the counter either process raises when it stops early
CHECK_EVERY = 1 << 14  # spins (about 1 ms) between checks that the other process is there
WAIT_SECONDS = 10  # for the second process's last word, or its exit
START_SECONDS = 120  # for it to import NumPy and map the training images
PAGE_BYTES = mmap.PAGESIZE
# Measured here with batch 64: splitting the pixels wins up to 64 hidden units (784-10-10
# epochs 1.3x faster), ties at 128, and loses at 256, where each process would redo
# more of the network than the smaller gather saves.
UNITS_FROM = 128


class PartnerGoneError(Exception):
    """The other process stopped, or asked this one to stop."""


@dataclass(frozen=True)
class Plan:
    """What each process takes of a network with one hidden layer: the first or second half of
    its inputs' rows of W1, or of its hidden units."""

    by: str  # "inputs" or "units"
    halves: tuple[slice, slice]

    @property
    def layer(self) -> int:
        """The layer whose product the processes add up: the hidden one's, or the output's."""
        return 0 if self.by == "inputs" else 1


def plan(sizes: list[int], shift: int) -> Plan:
    by = "inputs" if sizes[1] < UNITS_FROM and not shift else "units"
    width = sizes[0] if by == "inputs" else sizes[1]
    middle = (width + 1) // 2  # the first process takes the odd one out
    return Plan(by, (slice(0, middle), slice(middle, width)))


def part_sizes(sizes: list[int], split: Plan, me: int) -> list[int]:
    """Layer widths of process me's part, itself laid out as a network."""
    half = split.halves[me]
    if split.by == "inputs":
        return [half.stop - half.start, *sizes[1:]]
    return [sizes[0], half.stop - half.start, sizes[2]]


@dataclass
class Link:
    """One process's end of the exchange."""

    me: int  # 0 or 1
    counters: np.ndarray  # int64: steps each process has published (at me * STRIDE); ABORT
    parts: np.ndarray  # float32 (process, step parity, rows, width), shared
    partner_alive: Callable[[], bool]
    total: np.ndarray = field(init=False)  # float32 (rows, width), this process's own
    published: int = 0

    def __post_init__(self) -> None:
        self.total = np.empty(self.parts.shape[2:], np.float32)


def combine(link: Link, part: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The layer's z: this process's part of the product, the other's, and the bias. Parts
    alternate between two slots, so the other can publish its next part while this one still
    reads."""
    rows = len(part)
    link.published += 1
    slot = link.published & 1
    link.parts[link.me, slot, :rows] = part
    link.counters[link.me * STRIDE] = link.published
    wait(link, link.published)
    total = np.add(link.parts[0, slot, :rows], link.parts[1, slot, :rows], out=link.total[:rows])
    total += bias
    return total


def wait(link: Link, steps: int) -> None:
    """Spin until the other process has published `steps` parts."""
    counter, spins = (1 - link.me) * STRIDE, 0
    while link.counters[counter] < steps:
        spins += 1
        if spins % CHECK_EVERY == 0 and (link.counters[ABORT] or not link.partner_alive()):
            raise PartnerGoneError


def _pairs(params: np.ndarray, sizes: list[int], part: np.ndarray, split: Plan,
           me: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(whole network's view, part's view) for each array a part holds."""
    (w1, w2), (b1, b2) = network.layer_views(params, sizes)
    (part_w1, part_w2), (part_b1, part_b2) = network.layer_views(
        part, part_sizes(sizes, split, me))
    half = split.halves[me]
    if split.by == "inputs":
        return [(w1[half], part_w1), (w2, part_w2), (b1, part_b1), (b2, part_b2)]
    return [(w1[:, half], part_w1), (w2[half], part_w2), (b1[half], part_b1), (b2, part_b2)]


def halves(params: np.ndarray, sizes: list[int], split: Plan) -> list[np.ndarray]:
    """The two processes' flat parameters."""
    parts = []
    for me in (0, 1):
        part = np.empty(network.n_params(part_sizes(sizes, split, me)), params.dtype)
        for whole, mine in _pairs(params, sizes, part, split, me):
            mine[...] = whole
        parts.append(part)
    return parts


def join(params: np.ndarray, sizes: list[int], parts: list[np.ndarray], split: Plan) -> None:
    """Write the two parts back into the whole network's `params` (what both hold is the same
    in both)."""
    for me, part in enumerate(parts):
        for whole, mine in _pairs(params, sizes, part, split, me):
            whole[...] = mine


# An array in memory both processes map: (memory, shape, dtype), which pickles to the second.
Shared = tuple[Any, tuple[int, ...], str]


def share(context: Any, array: np.ndarray) -> Shared:
    memory = context.RawArray(ctypes.c_uint8, max(array.nbytes, 1))
    shared = (memory, array.shape, array.dtype.str)
    view(shared)[...] = array
    return shared


def view(shared: Shared) -> np.ndarray:
    memory, shape, dtype = shared
    return np.frombuffer(memory, dtype, count=math.prod(shape)).reshape(shape)


def touch(array: np.ndarray) -> None:
    """Map every page of `array` into this process now: the first epoch would otherwise pay
    for it (a page fault per 4 KiB: 30 ms for the training images)."""
    array.reshape(-1).view(np.uint8)[::PAGE_BYTES].max(initial=0)


# make_runner(params, sizes, x, y, rngs, (layer, combine)) -> run(first_step, bar) -> last lr:
# epochs of training on (x, y), as training.epoch_runner, given as something that pickles.
MakeRunner = Callable[..., Callable[[int, Any], float]]


def two_cpus() -> list[int]:
    """The two CPUs the processes keep to, or a PipelineError saying why there are none."""
    machine = f"{platform.system()} on {platform.machine()}"
    if not hasattr(os, "sched_setaffinity") or platform.machine().lower() != "x86_64":
        raise PipelineError(f"train.processes: 2 runs on Linux x86-64 only (its processes share "
                            f"memory without locks, each on a CPU of its own), not {machine}")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise PipelineError("train.processes: 2 needs two CPUs, this process may use one")
    if blas.OPENBLAS is None:
        raise PipelineError("train.processes: 2 needs the OpenBLAS bundled with NumPy's wheels "
                            "(to keep each process to one BLAS thread), this NumPy has none")
    # Two hyper-threads of one core would share its caches and its arithmetic: another core.
    first = core_of(cpus[0])
    others = [cpu for cpu in cpus[1:] if first is None or core_of(cpu) != first]
    return [cpus[0], (others or cpus[1:])[0]]


def core_of(cpu: int) -> tuple[str, str] | None:
    """(package, core) of a CPU as Linux reports it, or None where it does not."""
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return ((topology / "physical_package_id").read_text().strip(),
                (topology / "core_id").read_text().strip())
    except OSError:
        return None


@contextlib.contextmanager
def two_processes(make_runner: MakeRunner, params: np.ndarray, sizes: list[int],
                  x: np.ndarray, y: np.ndarray, batch: int, shift: int,
                  rngs: tuple[np.random.Generator, np.random.Generator],
                  ) -> Iterator[Callable[[int, Any], float]]:
    """Yields run(first_step, bar) -> last lr: an epoch of training `params` (one hidden
    layer) in place, split (as plan() chooses) between this process and a second one, which
    lives as long as the context."""
    allowed, cpus = os.sched_getaffinity(0), two_cpus()
    context = multiprocessing.get_context("spawn")
    split = plan(sizes, shift)
    shuffle_rng, noise_rng = rngs
    # Shifts from one stream in both; dropout masks from one too where both compute the
    # hidden layer, from one each where each computes its own units.
    dropout_rngs = (noise_rng, noise_rng) if split.by == "inputs" else noise_rng.spawn(2)
    parts = halves(params, sizes, split)
    if split.by == "inputs":
        shared_x0, shared_x1 = (share(context, x[:, half]) for half in split.halves)
    else:
        shared_x0 = shared_x1 = share(context, x)
    shared_y, second_part, counters, exchange = (share(context, array) for array in (
        y, parts[1], np.zeros(ABORT + 1, np.int64),
        np.zeros((2, 2, batch, sizes[split.layer + 1]), np.float32)))
    with _second_process_started(
            context, view(counters), (shared_x1, shared_y, second_part, counters, exchange),
            make_runner, part_sizes(sizes, split, 1), split.layer,
            (shuffle_rng, noise_rng, dropout_rngs[1]), cpus[1]) as (process, conn):
        link = Link(0, view(counters), view(exchange), process.is_alive)
        run = make_runner(parts[0], part_sizes(sizes, split, 0), view(shared_x0), view(shared_y),
                          (shuffle_rng, noise_rng, dropout_rngs[0]),
                          (split.layer, partial(combine, link)))

        def epoch(first_step: int, bar: Any) -> float:
            try:
                conn.send(first_step)
                lr = run(first_step, bar)
            # A broken pipe: it went between epochs; PartnerGoneError: in this one.
            except (OSError, PartnerGoneError):
                raise PipelineError(_failure(conn, process)) from None
            if (message := _reply(conn, process)) is not None:
                raise PipelineError(message)
            join(params, sizes, [parts[0], view(second_part)], split)
            return lr

        # A process woken from the pipe would otherwise start out on the CPU of the one that
        # woke it, and the two would take turns there for their first few steps (8 ms each).
        os.sched_setaffinity(0, cpus[:1])
        try:
            # One BLAS thread between epochs too: scoring on two would leave OpenBLAS's
            # second thread spinning, idle, into the next epoch.
            with blas.one_thread():
                yield epoch
        finally:
            os.sched_setaffinity(0, allowed)


@contextlib.contextmanager
def _second_process_started(context: Any, counters: np.ndarray, shared: tuple[Shared, ...],
                            make_runner: MakeRunner, sizes: list[int], layer: int,
                            rngs: tuple[np.random.Generator, ...], cpu: int,
                            ) -> Iterator[tuple[Any, Connection]]:
    """(process, connection): the second process, ready for its first epoch; stopped when
    the context ends, however it ends."""
    conn, second_end = context.Pipe()
    process = context.Process(target=_second_process, daemon=True, args=(
        second_end, make_runner, shared, sizes, layer, rngs, os.getpid(), cpu))
    # OpenBLAS starts its threads as NumPy loads it, and an idle one spins for a while: in the
    # second process it would take turns with the training for the first epoch's first steps.
    # Ctrl-C reaches both processes; ignored from its start, this one leaves it to the first.
    with _environment("OPENBLAS_NUM_THREADS", "1"), _interrupts_ignored():
        process.start()
    second_end.close()
    try:
        # Its word that it is ready: a failure to start shows here, and the first epoch's
        # time is the epoch's alone.
        if not conn.poll(START_SECONDS):
            raise PipelineError(f"the second training process was not ready after "
                                f"{START_SECONDS} s")
        if (message := _reply(conn, process)) is not None:
            raise PipelineError(message)
        yield process, conn
    finally:
        counters[ABORT] = 1  # stops a second process still waiting mid-epoch
        with contextlib.suppress(OSError):
            conn.send(None)  # and one waiting for the next epoch
        process.join(WAIT_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()
        conn.close()


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """os.environ[name] = value while a process is started, which inherits it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored while a process is started: it starts with SIGINT ignored, and Python
    leaves it so."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _reply(conn: Connection, process: Any) -> str | None:
    """None once the second process has finished its epoch, else what went wrong."""
    try:
        message = conn.recv()
    except (EOFError, OSError):  # its end closed, or reset
        process.join(WAIT_SECONDS)
        return f"the second training process stopped (exit code {process.exitcode})"
    return None if message is None else f"the second training process failed: {message}"


def _failure(conn: Connection, process: Any) -> str:
    if conn.poll(WAIT_SECONDS):
        return _reply(conn, process) or "the second training process stopped early"
    return f"the second training process stopped (exit code {process.exitcode})"


def _second_process(conn: Connection, make_runner: MakeRunner, shared: tuple[Shared, ...],
                    sizes: list[int], layer: int, rngs: tuple[np.random.Generator, ...],
                    parent: int, cpu: int) -> None:
    os.sched_setaffinity(0, [cpu])
    x, y, part, counters, exchange = map(view, shared)
    for array in (x, y, part):
        touch(array)
    link = Link(1, counters, exchange, lambda: os.getppid() == parent)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            run = make_runner(part, sizes, x, y, rngs, (layer, partial(combine, link)))
            conn.send(None)
            while (first_step := conn.recv()) is not None:
                run(first_step, None)
                conn.send(None)
    except (PartnerGoneError, EOFError, BrokenPipeError):
        return
    except Exception as err:  # reported by the first process, as one line
        counters[ABORT] = 1
        with contextlib.suppress(OSError):
            conn.send(f"{type(err).__name__}: {err}")
