import numpy as np
import pytest

from stages import idx
from stages.errors import PipelineError


def test_round_trip_keeps_shape_and_bytes():
    images = np.arange(2 * 28 * 28, dtype=np.uint16).astype(np.uint8).reshape(2, 28, 28)
    data = idx.encode(images)
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(data) == 16 + images.size
    np.testing.assert_array_equal(idx.decode(data, "x"), images)


def test_labels_header_is_one_dimensional():
    labels = np.array([7, 2, 1], np.uint8)
    assert idx.encode(labels) == b"\x00\x00\x08\x01\x00\x00\x00\x03\x07\x02\x01"


def test_encode_refuses_other_dtypes():
    with pytest.raises(ValueError, match="uint8"):
        idx.encode(np.zeros(3, np.int32))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than a header"),
        (b"\x00\x00", "shorter than a header"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic 01000801"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "data type 0x0d"),
        (b"\x00\x00\x08\x00", "IDX with 0 dimensions, expected 1 to 3"),
        (b"\x00\x00\x08\x04" + bytes(16), "IDX with 4 dimensions, expected 1 to 3"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "IDX header truncated: 8 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "needs 11 bytes, file has 10"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "needs 9 bytes, file has 10"),
        # 2**31 * 2**31 * 4 overflows int64 to 0: the size check must not be fooled.
        (b"\x00\x00\x08\x03\x80\x00\x00\x00\x80\x00\x00\x00\x00\x00\x00\x04", "needs"),
    ],
)
def test_malformed_files_are_rejected_by_name(data, message):
    with pytest.raises(PipelineError, match=message) as err:
        idx.decode(data, "data/raw/some-file")
    assert str(err.value).startswith("data/raw/some-file: ")
