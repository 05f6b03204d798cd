"""Reading a pickle of NumPy arrays without letting it run anything else.

A pickle names the callables it needs to rebuild its objects. This one refuses every name
except the three NumPy uses to rebuild a plain array, and does not hand even those to NumPy:
numpy.dtype and ndarray would take whatever state the file gives them, and a forged dtype
state (an object field at any offset, say) makes NumPy read and write memory it does not own.
Each name maps to a stand-in that only records what the file says; only numeric dtypes in
their plain form and C-ordered data of exactly the right length become arrays, through
np.frombuffer.
"""

import io
import math
import pickle

import numpy as np

from stages.errors import PipelineError

# Plain numeric dtypes, and the state NumPy pickles each with: (3, byte order, no subarray,
# no fields, ..., no flags).
DTYPES = {"f4", "f8", "i4", "i8", "u1"}
PLAIN_DTYPE_STATE = (None, None, None, -1, -1, 0)


class _Ndarray:
    """Stands for numpy.ndarray, which the pickle only names as the class to rebuild."""


class _Dtype:
    def __init__(self, spec: object, align: object = False, copy: object = True) -> None:
        self.spec, self.state = spec, None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def build(self) -> np.dtype:
        state = self.state if isinstance(self.state, tuple) else ()
        if (self.spec not in DTYPES or len(state) != 8 or state[0] != 3
                or state[2:] != PLAIN_DTYPE_STATE or state[1] not in ("<", "|")):
            raise pickle.UnpicklingError(f"refused dtype {self.spec!r} with state {self.state!r}")
        return np.dtype(self.spec)


class _Array:
    def __init__(self, cls: object, shape: object, code: object) -> None:
        if cls is not _Ndarray:
            raise pickle.UnpicklingError(f"refused to rebuild {cls!r} as an array")
        self.state = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def build(self) -> np.ndarray:
        try:
            version, shape, dtype, fortran, data = self.state
        except (TypeError, ValueError):
            raise pickle.UnpicklingError(f"refused array state {self.state!r:.80}") from None
        if isinstance(data, str):  # a Python 2 str, decoded as latin1 by the unpickler
            data = data.encode("latin1")
        if (version != 1 or fortran is not False or not isinstance(dtype, _Dtype)
                or not isinstance(data, bytes) or not isinstance(shape, tuple)
                or not all(type(n) is int and n >= 0 for n in shape)):
            raise pickle.UnpicklingError(f"refused array state {self.state!r:.80}")
        dtype = dtype.build()
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError(f"array data is {len(data)} bytes, shape {shape} of "
                                         f"{dtype} needs {math.prod(shape) * dtype.itemsize}")
        return np.frombuffer(data, dtype).reshape(shape)


ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _Ndarray,
    ("numpy", "dtype"): _Dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def _arrays(obj: object) -> object:
    """obj with each recorded array built; tuples, lists and dicts walked, other builtins
    kept."""
    if isinstance(obj, _Array):
        return obj.build()
    if isinstance(obj, tuple | list):
        return type(obj)(_arrays(item) for item in obj)
    if isinstance(obj, dict):
        return {key: _arrays(value) for key, value in obj.items()}
    if isinstance(obj, _Dtype) or obj is _Ndarray:
        raise pickle.UnpicklingError("a dtype or array class outside an array")
    return obj


def load_arrays(data: bytes, name: str) -> object:
    """Unpickle `data` (Python 2 pickles too), allowing only plain NumPy arrays and builtins."""
    try:
        return _arrays(_ArrayUnpickler(io.BytesIO(data), encoding="latin1").load())
    except Exception as err:  # a malformed pickle can raise almost anything
        raise PipelineError(f"{name}: unreadable pickle: {err}") from err
