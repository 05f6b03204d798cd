"""models/model.npz: the layers and the activation, in a file np.load reads without pickle."""

import re
import zipfile
from pathlib import Path

import numpy as np

from stages import network
from stages.errors import PipelineError
from stages.files import ZIP_MAGIC, check_magic, npz_bytes


def encode(weights: list[np.ndarray], biases: list[np.ndarray], activation: str) -> bytes:
    """The bytes of a model file."""
    arrays = {"activation": np.array(activation)}
    for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
        arrays[f"W{layer}"], arrays[f"b{layer}"] = w, b
    return npz_bytes(arrays)


def check_fits(path: Path, weights: list[np.ndarray], inputs: int, classes: int,
               needed: str) -> None:
    """Refuse a model that does not map `inputs` pixels to `classes` scores; `needed` says
    where those numbers come from, for the message."""
    if weights[0].shape[0] != inputs or weights[-1].shape[1] != classes:
        raise PipelineError(f"{path}: maps {weights[0].shape[0]} inputs to "
                            f"{weights[-1].shape[1]} classes, {needed} {inputs} and {classes}")


def load(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(weights, biases, activation), checked to chain into a valid float32 network of finite
    numbers."""
    check_magic(path, ZIP_MAGIC, "model (.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise PipelineError(f"{path}: not a readable model file: {err}") from err
    layers = sum(1 for name in arrays if re.fullmatch(r"W\d+", name))
    try:
        activation = str(arrays.pop("activation"))
        weights = [arrays.pop(f"W{i}") for i in range(layers)]
        biases = [arrays.pop(f"b{i}") for i in range(layers)]
    except KeyError as err:
        raise PipelineError(f"{path}: model file lacks {err.args[0]}") from err
    if activation not in network.ACTIVATIONS:
        raise PipelineError(f"{path}: unknown activation {activation!r}")
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if not all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in (w, b)):
            raise PipelineError(f"{path}: layer {i} is not float32 arrays")
        fits = w.ndim == 2 and b.shape == (w.shape[1],)
        if not fits or (i and w.shape[0] != weights[i - 1].shape[1]):
            raise PipelineError(f"{path}: layer {i} shapes W{w.shape} b{b.shape} do not chain")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise PipelineError(f"{path}: layer {i} holds NaN or infinite numbers, expected "
                                "finite ones")
    if not layers or arrays:
        raise PipelineError(f"{path}: unexpected contents {sorted(arrays) or 'no layers'}")
    return weights, biases, activation


def finite_logits(path: Path, model: tuple[list[np.ndarray], list[np.ndarray], str],
                  x: np.ndarray, where: str) -> np.ndarray:
    """The logits of the model at `path` for x, refusing a model whose outputs overflow;
    `where` says on what, for the message."""
    weights, biases, activation = model
    # Overflow shows as inf or NaN in the logits, which the check below reports in one line.
    with np.errstate(over="ignore", invalid="ignore"):
        logits = network.logits_in_chunks(weights, biases, x, activation)
    if not np.isfinite(logits).all():
        raise PipelineError(f"{path}: gives non-finite outputs {where}")
    return logits
