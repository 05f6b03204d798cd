"""out = keep * out + a.T @ b as one BLAS call: the GEMM's beta, which NumPy does not expose.

With it, a plain SGD step W <- (1 - lr * decay) * W - lr * a.T @ delta is the product that
computes the gradient, adding straight into the weights: no gradient buffer is written, and no
second pass reads and writes every weight.

The call goes to the OpenBLAS that NumPy's wheels bundle and have already loaded (built with
64-bit integers: its symbols end in 64_). A NumPy built against another BLAS has no such
library; there np.matmul and a second pass do the same sum. The bits match while k, the rows
of a and b, fits in one of OpenBLAS's blocks along k (320 with the AVX2 kernels), so for any
usual batch; beyond that, BLAS adds each block's partial product into out in turn, and the
two differ by rounding.
"""

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # CBLAS's enums
# Below this many outputs, the call through ctypes costs more than the pass it saves
# (measured with 64 rows: 784 x 24 outputs take 0.7 us less through NumPy, 784 x 32 take
# 6 us more).
MIN_BLAS_OUTPUTS = 20_000
NEEDED = ("scipy_cblas_sgemm64_", "scipy_openblas_get_num_threads64_",
          "scipy_openblas_set_num_threads64_")


def find_openblas() -> ctypes.CDLL | None:
    """NumPy's bundled OpenBLAS, or None where NumPy has none."""
    package = Path(np.__file__).parent
    # Linux and Windows wheels keep it in numpy.libs beside the package, macOS's in .dylibs.
    for path in sorted([*package.parent.glob("numpy.libs/*scipy_openblas64_*"),
                        *package.glob(".dylibs/*scipy_openblas64_*")]):
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        if all(hasattr(library, name) for name in NEEDED):
            return library
    return None


def find_sgemm(library: ctypes.CDLL | None) -> Callable[..., None] | None:
    """cblas_sgemm from `library`, typed for ctypes."""
    if library is None:
        return None
    sgemm = library.scipy_cblas_sgemm64_
    index, scalar, pointer = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    sgemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, index, index, index, scalar,
                      pointer, index, pointer, index, scalar, pointer, index]
    sgemm.restype = None
    return sgemm


OPENBLAS = find_openblas()
SGEMM = find_sgemm(OPENBLAS)


@contextmanager
def one_thread() -> Iterator[None]:
    """OpenBLAS on the calling thread alone for the duration (nothing where NumPy has no
    OpenBLAS); the thread count is restored after."""
    if OPENBLAS is None:
        yield
        return
    threads = OPENBLAS.scipy_openblas_get_num_threads64_()
    OPENBLAS.scipy_openblas_set_num_threads64_(1)
    try:
        yield
    finally:
        OPENBLAS.scipy_openblas_set_num_threads64_(threads)


def address(a: np.ndarray) -> ctypes.Array:
    # A zero-length ctypes array on a's (writable) memory passes as its address, at a quarter
    # of the cost of a.ctypes.data, and keeps a alive for the call.
    return (ctypes.c_char * 0).from_buffer(a)


def blas_pays(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> bool:
    """Whether the call can take these arrays as they are and is worth its overhead. BLAS
    reads a and b while it writes out, so they must not overlap it."""
    return (SGEMM is not None and out.size >= MIN_BLAS_OUTPUTS and a.size > 0
            and all(x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous
                    and x.flags.writeable for x in (a, b, out))
            and not np.may_share_memory(out, a) and not np.may_share_memory(out, b))


def matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray, keep: float = 0.0) -> np.ndarray:
    """out = keep * out + a.T @ b, for a (k, m), b (k, n) and out (m, n). Through BLAS when it
    is there, all three are writable C-ordered float32, out overlaps neither a nor b, and out is
    large enough to pay for the call; else by np.matmul and a second pass. keep is rounded to
    float32 either way, like the numbers it scales: 1 - x moves in steps of 6e-8."""
    if a.shape[0] != b.shape[0] or out.shape != (a.shape[1], b.shape[1]):
        raise ValueError(f"matmul_tn: shapes {a.shape}.T @ {b.shape} -> {out.shape} do not fit")
    if keep == 0.0:
        return np.matmul(a.T, b, out=out)
    if blas_pays(a, b, out):
        (k, m), n = a.shape, b.shape[1]
        SGEMM(ROW_MAJOR, TRANS, NO_TRANS, m, n, k, 1.0, address(a), m, address(b), n, keep,
              address(out), n)
        return out
    # As BLAS does it: scale out by keep (not at all for 1), then add the rounded product.
    product = np.matmul(a.T, b)
    if keep != 1.0:
        out *= keep
    out += product
    return out
