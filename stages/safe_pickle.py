"""Reading a pickle of NumPy arrays without letting it run anything else.

A pickle names the callables it needs to rebuild its objects; this one refuses every name
except the three NumPy uses to rebuild a plain array, so a hostile file cannot run code.
"""

import io
import pickle

import numpy as np

from stages.errors import PipelineError

_reconstruct = np.zeros(0).__reduce__()[0]
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def load_arrays(data: bytes, name: str) -> object:
    """Unpickle `data` (Python 2 pickles too), allowing only NumPy arrays and builtins."""
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # a malformed pickle can raise almost anything
        raise PipelineError(f"{name}: unreadable pickle: {err}") from err
