"""Mini-batch training: shuffled batches, the gradient step, the learning-rate schedule,
validation every epoch, early stopping and a divergence guard."""

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from stages import augment, network, optim, split
from stages.errors import PipelineError
from stages.params import Train
from stages.progress import Bar
from stages.splits import PIXEL_SCALE, scale_pixels

TRAIN_SCORE_ROWS = 10_000  # the training curve is scored on this many leading rows
CHECK_ROWS = 1_000  # passes over all the images take this many at a time: ~10 MB of temporaries


@dataclass
class Buffers:
    """Every array a step writes, allocated once for a full batch; shorter batches use the
    leading rows, a batch trimmed to fewer pixels (see gather) x's leading entries. Beyond
    these a step makes small temporaries only (a row, a column, a product too small for
    blas.matmul_tn's BLAS path), except a batch-sized one each for leaky_relu and shift, and
    plain SGD's weight-sized products where NumPy has no OpenBLAS."""

    codes: np.ndarray  # the batch's uint8 pixel codes, when gathered from those
    x: np.ndarray
    y: np.ndarray
    outputs: list[np.ndarray]  # per layer: hidden outputs, then the logits
    slopes: list[np.ndarray]  # per hidden layer
    deltas: list[np.ndarray]  # per layer: dLoss/dz
    masks: list[np.ndarray]  # per hidden layer, when dropout is on
    ones: np.ndarray  # for the bias gradients' column sums
    grad: np.ndarray | None  # flat, laid out like the parameters, for gradient()
    decay: np.ndarray | None  # scratch for weight decay added to grad
    grad_w: list[np.ndarray]  # views into grad
    grad_b: list[np.ndarray]


def make_buffers(sizes: list[int], rows: int, dropout: float, weight_decay: float,
                 with_gradient: bool = True) -> Buffers:
    """Buffers for batches of up to `rows` rows. Only gradient() needs a whole gradient: plain
    SGD steps inside backprop (sgd_step), so it goes without (with_gradient=False)."""
    def per_layer(widths: list[int]) -> list[np.ndarray]:
        return [np.empty((rows, width), np.float32) for width in widths]

    grad = np.empty(network.n_params(sizes), np.float32) if with_gradient else None
    grad_w, grad_b = network.layer_views(grad, sizes) if grad is not None else ([], [])
    return Buffers(
        codes=np.empty((rows, sizes[0]), np.uint8),
        x=np.empty((rows, sizes[0]), np.float32), y=np.empty((rows, sizes[-1]), np.float32),
        outputs=per_layer(sizes[1:]), slopes=per_layer(sizes[1:-1]), deltas=per_layer(sizes[1:]),
        masks=per_layer(sizes[1:-1]) if dropout else [], ones=np.ones(rows, np.float32),
        grad=grad,
        decay=(np.empty(network.n_weights(sizes), np.float32)
               if with_gradient and weight_decay else None),
        grad_w=grad_w, grad_b=grad_b)


def _row_blocks(count: int) -> Iterator[slice]:
    """Slices of CHECK_ROWS rows that cover `count` rows: for passes over all the images."""
    return (slice(start, start + CHECK_ROWS) for start in range(0, count, CHECK_ROWS))


def compact_pixels(x: np.ndarray) -> np.ndarray:
    """x as uint8 pixel codes if scale_pixels gives back exactly x, as preprocess writes it,
    else x itself. A batch gathered from codes reads a quarter of the bytes from
    memory, and the gather is the step's largest cost after the matrix products."""
    codes = np.empty(x.shape, np.uint8)
    for rows in _row_blocks(len(x)):
        chunk, out = x[rows], codes[rows]
        scaled = np.rint(chunk / PIXEL_SCALE)
        # min and max also catch NaN: any comparison with it is false.
        if not (scaled.min(initial=0) >= 0 and scaled.max(initial=0) <= 255):
            return x
        out[...] = scaled
        if not np.array_equal(scale_pixels(out), chunk):
            return x
    return codes


def trims(config: Train, x: np.ndarray) -> bool:
    """Whether batches of x are trimmed to the pixels they use (see zero_tails): for
    compact_pixels' codes, unless shifts, which need the pixels in the image's order and move
    ink into places a trim would leave out."""
    return x.dtype == np.uint8 and not config.shift


def zero_tails(codes: np.ndarray, parts: int) -> np.ndarray:
    """An order of the columns of `codes` that leaves a long run of zeros at the end of most
    rows: most often nonzero first (MNIST's batches of 64 then end after 613 of 784 pixels on
    average). With parts 2, the columns go alternately to two halves, each in that order."""
    counts = np.zeros(codes.shape[1], np.intp)
    for rows in _row_blocks(len(codes)):
        counts += np.count_nonzero(codes[rows], axis=0)
    by_use = np.argsort(-counts, kind="stable")
    return np.concatenate([by_use[part::parts] for part in range(parts)])


def reorder_columns(codes: np.ndarray, columns: np.ndarray) -> None:
    """codes = codes[:, columns], in place: a copy would hold the images twice."""
    for rows in _row_blocks(len(codes)):
        block = codes[rows]
        block[...] = block.take(columns, axis=1)


def row_ends(codes: np.ndarray) -> np.ndarray:
    """Per row, 1 + the index of its last nonzero column: 0 for a row of zeros."""
    ends = np.empty(len(codes), np.intp)
    for rows in _row_blocks(len(codes)):
        used = codes[rows, ::-1] != 0
        ends[rows] = np.where(used.any(axis=1), codes.shape[1] - used.argmax(axis=1), 0)
    return ends


def gather(x: np.ndarray, y: np.ndarray, rows: np.ndarray, buffers: Buffers,
           width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The batch of `rows` as float32 rows in the buffers; x may be compact_pixels' codes.
    Codes can be trimmed to their leading `width` columns, where the rows' others are all
    zero: a narrower input the network takes for the whole (see network)."""
    n = len(rows)
    # mode="clip" lets take() write straight into the buffer (rows are in range).
    yb = y.take(rows, axis=0, out=buffers.y[:n], mode="clip")
    if x.dtype != np.uint8:
        return x.take(rows, axis=0, out=buffers.x[:n], mode="clip"), yb
    codes = x.take(rows, axis=0, out=buffers.codes[:n], mode="clip")
    width = x.shape[1] if width is None else width
    xb = buffers.x.reshape(-1)[: n * width].reshape(n, width)  # contiguous, as BLAS likes
    return scale_pixels(codes[:, :width], out=xb), yb


def draw_masks(masks: list[np.ndarray], rows: int, dropout: float,
               rng: np.random.Generator) -> None:
    """Inverted dropout: each unit kept with probability 1 - dropout and scaled by its
    inverse, so the expected activation matches inference, which uses no mask."""
    keep = 1.0 - dropout
    for mask in masks:
        rng.random(out=mask[:rows], dtype=np.float32)
        np.less(mask[:rows], keep, out=mask[:rows])
        mask[:rows] *= 1.0 / keep


# (layer, total): total(part, bias) is that layer's z, from this process's part of its product
# and its bias (see split); None where one process holds the whole network.
Combine = tuple[int, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None


def forward_and_delta(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray,
                      y: np.ndarray, activation: str, buffers: Buffers,
                      masks: list[np.ndarray] | None, scale: float, combine: Combine = None,
                      ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The forward pass on the batch (x, y) and the delta of `scale` times its mean
    cross-entropy: (outputs, slopes, delta), all in the buffers."""
    outputs, slopes = network.forward(weights, biases, x, activation, masks,
                                      out=(buffers.outputs, buffers.slopes), combine=combine)
    delta = network.output_delta(outputs[-1], y, out=buffers.deltas[-1][: len(x)], scale=scale)
    return outputs, slopes, delta


def gradient(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray,
             y: np.ndarray, activation: str, buffers: Buffers,
             masks: list[np.ndarray] | None = None, combine: Combine = None) -> np.ndarray:
    """The gradient of the mean cross-entropy on the batch (x, y), in buffers.grad."""
    if buffers.grad is None:
        raise ValueError("gradient() needs buffers made with_gradient")
    outputs, slopes, delta = forward_and_delta(weights, biases, x, y, activation, buffers,
                                               masks, 1.0, combine)
    network.backward(weights, outputs, slopes, delta, buffers.grad_w, buffers.grad_b,
                     buffers.deltas, buffers.ones)
    return buffers.grad


def sgd_step(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray,
             y: np.ndarray, activation: str, buffers: Buffers,
             masks: list[np.ndarray] | None, lr: float, weight_decay: float,
             combine: Combine = None) -> None:
    """One plain SGD step on the batch (x, y): W <- (1 - lr * weight_decay) * W - lr * dL/dW
    and b <- b - lr * dL/db. The products that compute the gradients add them straight into
    the parameters (see blas), which saves writing a gradient and a pass over every weight."""
    outputs, slopes, delta = forward_and_delta(weights, biases, x, y, activation, buffers,
                                               masks, -lr, combine)
    network.backward(weights, outputs, slopes, delta, weights, biases, buffers.deltas,
                     buffers.ones, shrink=1.0 - lr * weight_decay)


def run_epoch(
    params: np.ndarray, sizes: list[int], x: np.ndarray, y: np.ndarray, config: Train,
    buffers: Buffers, state: optim.State, lr_at: Callable[[int], float], first_step: int,
    rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator],
    bar: Bar | None = None, combine: Combine = None, ends: np.ndarray | None = None,
) -> float:
    """One pass over (x, y) in a fresh random order, updating `params` in place; returns the
    last learning rate used. Step numbers start at `first_step`, for the schedule. x holds
    float32 rows or, from compact_pixels, their uint8 codes (always gathered in a shuffled
    order, even into one batch of the whole set). `rngs` draw the batch order, the shifts and
    the dropout masks; the last two may be one stream. With codes, `ends` (row_ends) trims
    each batch to the columns its rows use."""
    shuffle_rng, shift_rng, dropout_rng = rngs
    batch = min(config.batch_size, len(x))
    # One batch covering the set needs no gather: its order changes nothing.
    whole = batch == len(x) and not config.shift and x.dtype != np.uint8
    order = None if whole else shuffle_rng.permutation(len(x))
    # Each batch's width: where its widest row ends (ends come with codes, never whole).
    widths = (None if ends is None
              else np.maximum.reduceat(ends.take(order), np.arange(0, len(x), batch)))
    weights, biases = network.layer_views(params, sizes)
    lr = config.lr
    for step, start in enumerate(range(0, len(x), batch)):
        if whole:
            xb, yb = x, y
        else:
            xb, yb = gather(x, y, order[start : start + batch], buffers,
                            None if widths is None else int(widths[step]))
        if config.shift:
            augment.shift(xb, config.shift, shift_rng)
        if config.dropout:
            draw_masks(buffers.masks, len(xb), config.dropout, dropout_rng)
        lr = lr_at(first_step + step)
        if config.optimizer == "sgd":
            sgd_step(weights, biases, xb, yb, config.activation, buffers, buffers.masks, lr,
                     config.weight_decay, combine)
        else:
            grad = gradient(weights, biases, xb, yb, config.activation, buffers, buffers.masks,
                            combine)
            if config.weight_decay:
                network.add_weight_decay(grad, params, sizes, config.weight_decay, buffers.decay)
            optim.OPTIMIZERS[config.optimizer](params, grad, state, lr, config.momentum)
        if bar:
            bar.update(start + len(xb))
    return lr


# run(first_step, bar) -> the last learning rate: one epoch, as run_epoch
EpochRunner = Callable[[int, Bar | None], float]


def epoch_runner(config: Train, lr_at: Callable[[int], float], params: np.ndarray,
                 sizes: list[int], x: np.ndarray, y: np.ndarray,
                 rngs: tuple[np.random.Generator, np.random.Generator, np.random.Generator],
                 combine: Combine = None) -> EpochRunner:
    """Epochs of training `params` in place on (x, y), with buffers and optimiser state kept
    from one epoch to the next."""
    buffers = make_buffers(sizes, min(config.batch_size, len(x)), config.dropout,
                           config.weight_decay, with_gradient=config.optimizer != "sgd")
    state = optim.init_state(config.optimizer, len(params))
    ends = row_ends(x) if trims(config, x) else None
    return lambda first_step, bar: run_epoch(params, sizes, x, y, config, buffers, state, lr_at,
                                             first_step, rngs, bar, combine, ends)


def steps_per_epoch(config: Train, rows: int) -> int:
    """Batches in an epoch over `rows` examples, the last one shorter if need be."""
    return math.ceil(rows / min(config.batch_size, rows))


def learning_rate_at(config: Train, epoch_steps: int, step: int) -> float:
    return optim.learning_rate(config.lr_schedule, config.lr, config.lr_min, step,
                               epoch_steps * config.epochs, step // epoch_steps,
                               config.lr_step_epochs, config.lr_step_factor,
                               config.lr_warmup_epochs * epoch_steps)


def scores(params: np.ndarray, sizes: list[int], activation: str,
           data: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    weights, biases = network.layer_views(params, sizes)
    return network.score(network.logits_in_chunks(weights, biases, data[0], activation), data[1])


def train(
    params: np.ndarray, sizes: list[int], train_set: tuple[np.ndarray, np.ndarray],
    val_set: tuple[np.ndarray, np.ndarray], config: Train,
    rngs: tuple[np.random.Generator, np.random.Generator],
    log: Callable[[str], None] = print, progress: bool = True,
) -> list[dict[str, float]]:
    """Train the flat `params` in place; return one row of scores per epoch. With early
    stopping on (config.patience > 0), `params` end as the best epoch's by validation accuracy.
    """
    x, y = train_set
    batch = min(config.batch_size, len(x))
    # Codes pay off where batches are gathered; one batch of the whole set is used as it is.
    pixels = x if batch == len(x) and not config.shift else compact_pixels(x)
    with runner(params, sizes, pixels, y, config, rngs) as run:
        return _epochs(run, params, sizes, train_set, val_set, config, log, progress)


@contextlib.contextmanager
def runner(params: np.ndarray, sizes: list[int], x: np.ndarray, y: np.ndarray, config: Train,
           rngs: tuple[np.random.Generator, np.random.Generator],
           ) -> Iterator[EpochRunner]:
    """A context giving run(first_step, bar): epochs of training `params` in place on (x, y),
    in this process alone or (config.processes 2) split with a second one. `rngs` draw the
    batch order, then shifts and dropout masks. Where batches are trimmed (see trims), the
    training works on x's columns in zero_tails' order, which it puts them in, in place (x
    is the runner's own), and on a copy of the network with W1's rows in the same order;
    `params` gets the network back in its own order after every epoch."""
    columns = None
    if trims(config, x):
        by_inputs = config.processes == 2 and split.plan(sizes, config.shift).by == "inputs"
        columns = zero_tails(x, 2 if by_inputs else 1)
        reorder_columns(x, columns)
    work = params if columns is None else inputs_reordered(params, sizes, columns)
    with _runner(work, sizes, x, y, config, rngs) as run:
        if columns is None:
            yield run
            return

        def epoch(first_step: int, bar: Bar | None) -> float:
            lr = run(first_step, bar)
            inputs_restored(params, work, sizes, columns)
            return lr

        yield epoch


def inputs_reordered(params: np.ndarray, sizes: list[int], columns: np.ndarray) -> np.ndarray:
    """A copy of `params` whose W1 has its rows, one per input, in the order `columns`."""
    work = params.copy()
    w1 = network.layer_views(work, sizes)[0][0]
    w1[...] = w1[columns]
    return work


def inputs_restored(params: np.ndarray, work: np.ndarray, sizes: list[int],
                    columns: np.ndarray) -> None:
    """params = work, from inputs_reordered, with W1's rows put back in their own order."""
    params[...] = work
    network.layer_views(params, sizes)[0][0][columns] = network.layer_views(work, sizes)[0][0]


def _runner(params: np.ndarray, sizes: list[int], x: np.ndarray, y: np.ndarray,
            config: Train, rngs: tuple[np.random.Generator, np.random.Generator],
            ) -> contextlib.AbstractContextManager[EpochRunner]:
    steps = steps_per_epoch(config, len(x))
    # A partial of a module's function, unlike a closure, can go to a second process.
    make_runner = partial(epoch_runner, config, partial(learning_rate_at, config, steps))
    if config.processes == 2:
        return split.two_processes(make_runner, params, sizes, x, y,
                                   min(config.batch_size, len(x)), config.shift, rngs)
    shuffle_rng, noise_rng = rngs
    return contextlib.nullcontext(make_runner(params, sizes, x, y,
                                              (shuffle_rng, noise_rng, noise_rng)))


def _epochs(run: EpochRunner, params: np.ndarray, sizes: list[int],
            train_set: tuple[np.ndarray, np.ndarray], val_set: tuple[np.ndarray, np.ndarray],
            config: Train, log: Callable[[str], None], progress: bool,
            ) -> list[dict[str, float]]:
    x, y = train_set
    steps = steps_per_epoch(config, len(x))
    train_view = (x[:TRAIN_SCORE_ROWS], y[:TRAIN_SCORE_ROWS])
    best, best_acc, best_epoch = np.empty_like(params), -1.0, 0
    history = []
    for epoch in range(1, config.epochs + 1):
        bar = Bar(f"epoch {epoch}/{config.epochs}", len(x)) if progress else None
        # A diverging run overflows; the finiteness check below reports that in one line.
        with np.errstate(over="ignore", invalid="ignore"):
            lr = run((epoch - 1) * steps, bar)
            train_loss, train_acc = scores(params, sizes, config.activation, train_view)
            val_loss, val_acc = scores(params, sizes, config.activation, val_set)
        if bar:
            bar.close()
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise PipelineError(f"training diverged in epoch {epoch} (train loss {train_loss}); "
                                f"try a train.lr below {config.lr}")
        history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss,
                        "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc})
        log(f"epoch {epoch}/{config.epochs}: lr {lr:.4g}, train loss {train_loss:.4f} "
            f"acc {train_acc:.4f}, val loss {val_loss:.4f} acc {val_acc:.4f}")
        if config.patience and val_acc > best_acc:
            best[...], best_acc, best_epoch = params, val_acc, epoch
        elif config.patience and epoch - best_epoch >= config.patience:
            log(f"early stop: no better val accuracy for {config.patience} epochs")
            break
    if config.patience:
        params[...] = best
        log(f"kept epoch {best_epoch}'s weights (val accuracy {best_acc:.4f})")
    return history
