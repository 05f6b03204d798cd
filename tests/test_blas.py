import numpy as np
import pytest

from stages import blas

needs_blas = pytest.mark.skipif(blas.SGEMM is None, reason="NumPy here has no bundled OpenBLAS")


def operands(k=64, m=300, n=80, seed=0):
    rng = np.random.default_rng(seed)
    a, b, out = (rng.standard_normal(shape, dtype=np.float32)
                 for shape in ((k, m), (k, n), (m, n)))
    return a, b, out


def test_numpys_bundled_openblas_is_found_where_numpy_says_it_has_one():
    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if config["name"] != "scipy-openblas" or "USE64BITINT" not in config["openblas configuration"]:
        pytest.skip(f"NumPy here uses {config['name']}")
    assert blas.SGEMM is not None


@needs_blas
@pytest.mark.parametrize("keep", [1.0, 0.999, 1 - 0.1 * 1e-4])  # the last: lr 0.1, decay 1e-4
def test_blas_and_numpy_give_the_same_bits(monkeypatch, keep):
    a, b, start = operands()
    assert start.size >= blas.MIN_BLAS_OUTPUTS  # so the first call goes through BLAS
    through_blas = blas.matmul_tn(a, b, start.copy(), keep)
    monkeypatch.setattr(blas, "SGEMM", None)
    through_numpy = blas.matmul_tn(a, b, start.copy(), keep)
    assert through_blas.tobytes() == through_numpy.tobytes()
    want = keep * start.astype(np.float64) + a.T.astype(np.float64) @ b
    np.testing.assert_allclose(through_blas, want, rtol=1e-4, atol=1e-4)


@needs_blas
def test_blas_writes_into_out_and_nothing_else():
    a, b, weights = operands()
    # out is a view inside a longer vector, as each layer's weights are in the parameters.
    flat = np.full(weights.size + 200, -7.0, np.float32)
    out = flat[100:-100].reshape(weights.shape)
    out[...] = weights
    a_before, b_before, want = a.copy(), b.copy(), weights + a.T @ b
    assert blas.matmul_tn(a, b, out, 1.0) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert (flat[:100] == -7).all()
    assert (flat[-100:] == -7).all()
    assert a.tobytes() == a_before.tobytes()
    assert b.tobytes() == b_before.tobytes()


@needs_blas
def test_past_one_block_of_rows_blas_and_numpy_differ_only_by_rounding(monkeypatch):
    a, b, start = operands(k=1000)
    through_blas = blas.matmul_tn(a, b, start.copy(), 1.0)
    monkeypatch.setattr(blas, "SGEMM", None)
    through_numpy = blas.matmul_tn(a, b, start.copy(), 1.0)
    np.testing.assert_allclose(through_blas, through_numpy, rtol=1e-5, atol=1e-4)


def test_keep_zero_ignores_what_out_held():
    a, b, _ = operands()
    out = np.full((a.shape[1], b.shape[1]), np.nan, np.float32)
    np.testing.assert_array_equal(blas.matmul_tn(a, b, out), a.T @ b)


@pytest.mark.parametrize("layout", ["float64", "strided", "small", "read-only", "overlapping"])
def test_other_layouts_take_the_numpy_path_to_the_same_sum(monkeypatch, layout):
    def refuse(*_):
        raise AssertionError("went through BLAS")

    monkeypatch.setattr(blas, "SGEMM", refuse)
    with pytest.raises(AssertionError, match="went through BLAS"):  # as the usual layout does
        blas.matmul_tn(*operands(), 0.5)
    a, b, out = operands(m=(10 if layout == "small" else 300))
    if layout == "float64":
        a, b, out = a.astype(np.float64), b.astype(np.float64), out.astype(np.float64)
    if layout == "strided":
        a = np.repeat(a, 2, axis=1)[:, ::2]  # same values, every other column of a wider array
    if layout == "read-only":
        a.flags.writeable = False
    if layout == "overlapping":  # b is out's first rows: BLAS would read what it overwrites
        b = out[: len(a)]
    want = 0.5 * out + a.T @ b
    got = blas.matmul_tn(a, b, out, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shapes_that_do_not_fit_are_refused():
    a, b, _ = operands(m=3, n=2)
    with pytest.raises(ValueError, match=r"shapes \(64, 3\)\.T @ \(64, 2\) -> \(2, 3\) do not fit"):
        blas.matmul_tn(a, b, np.zeros((2, 3), np.float32), 1.0)
