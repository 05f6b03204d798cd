import errno
import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from stages import files
from stages.errors import PipelineError


def test_atomic_file_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def killed_mid_write():
        with files.atomic_file(target) as handle:
            handle.write(b"half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_mid_write()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_dir_replaces_the_whole_directory(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "stale").write_text("x")
    with files.atomic_dir(out) as staging:
        (staging / "fresh").write_text("y")
        assert not (out / "fresh").exists()
    assert sorted(os.listdir(out)) == ["fresh"]
    assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_atomic_dir_keeps_the_old_directory_on_failure(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "old").write_text("x")

    def killed_mid_write():
        with files.atomic_dir(out) as staging:
            (staging / "new").write_text("y")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_mid_write()
    assert sorted(os.listdir(out)) == ["old"]
    assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_unwritable_location_is_a_one_line_error(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    with pytest.raises(PipelineError, match=r"out\.json: cannot write"):
        files.write_all({tmp_path / "blocker" / "out.json": files.json_bytes({})})


def test_disk_full_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(PipelineError, match=r"model\.npz: cannot write: No space left on device"):
        files.write_all({target: b"new contents"})
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.npz"]


def test_npz_bytes_depend_only_on_the_arrays(tmp_path):
    arrays = {"W0": np.arange(6, dtype=np.float32).reshape(2, 3), "activation": np.array("relu")}
    files.write_all({tmp_path / "a.npz": files.npz_bytes(arrays)})
    os.utime(tmp_path, (0, 0))
    files.write_all({tmp_path / "b.npz": files.npz_bytes(arrays)})
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.npz", "b.npz")]
    assert digest[0] == digest[1]
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        assert {info.date_time for info in archive.infolist()} == {files.ZIP_EPOCH}
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["W0"], arrays["W0"])
        assert str(npz["activation"]) == "relu"


def test_json_and_npy_round_trip(tmp_path):
    files.write_all({tmp_path / "m.json": files.json_bytes({"test": {"accuracy": 0.5}})})
    assert json.loads((tmp_path / "m.json").read_text()) == {"test": {"accuracy": 0.5}}
    assert (tmp_path / "m.json").read_text().endswith("}\n")
    array = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    files.save_npy(tmp_path / "x.npy", array)
    np.testing.assert_array_equal(files.load_npy(tmp_path / "x.npy"), array)


def test_json_refuses_nan_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="not JSON compliant"):
        files.write_all({tmp_path / "m.json": files.json_bytes({"loss": float("nan")})})
    assert os.listdir(tmp_path) == []


def test_atomic_dir_keeps_the_old_directory_when_the_swap_fails(tmp_path, monkeypatch):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "old").write_text("x")
    real_rename = Path.rename

    def second_rename_fails(self, target):
        if self.name.endswith(".tmp"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", second_rename_fails)
    with (pytest.raises(PipelineError, match="raw: cannot write: Invalid cross-device link"),
          files.atomic_dir(out) as staging):
        (staging / "new").write_text("y")
    assert sorted(os.listdir(out)) == ["old"]
    assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_load_npy_refuses_what_is_not_npy_without_suggesting_pickle(tmp_path):
    (tmp_path / "noise.npy").write_bytes(bytes(range(200)))
    message = r"noise\.npy: not a \.npy file \(it starts 000102"
    with pytest.raises(PipelineError, match=message) as err:
        files.load_npy(tmp_path / "noise.npy")
    assert "pickle" not in str(err.value)


def test_load_npy_refuses_a_header_that_promises_more_than_the_file_holds(tmp_path):
    # A damaged header promising 29 GiB: refused from the file's size, before any allocation.
    path = tmp_path / "x_train.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": (10_000_000, 784)})
        handle.write(bytes(16))
    size = path.stat().st_size
    with pytest.raises(PipelineError) as err:
        files.load_npy(path)
    assert str(err.value) == (f"{path}: not a readable .npy file: the header promises "
                              f"{size - 16 + 31_360_000_000} bytes, the file holds {size}")


def test_load_npy_refuses_pickles_and_names_the_file(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match=r"obj\.npy: not a readable \.npy file"):
        files.load_npy(tmp_path / "obj.npy")
    with pytest.raises(PipelineError, match=r"missing\.npy: not found"):
        files.load_npy(tmp_path / "missing.npy")


def test_write_all_renames_nothing_until_every_file_is_on_disk(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "b.json").write_text("old b")
    real_fsync = files.os.fsync
    synced = []

    def third_sync_fails(fd):
        synced.append(fd)
        if len(synced) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", third_sync_fails)
    outputs = {tmp_path / "a.json": b"new a", tmp_path / "b.json": b"new b",
               tmp_path / "c.json": b"new c"}
    with pytest.raises(PipelineError, match=r"c\.json: cannot write: No space left on device"):
        files.write_all(outputs)
    assert [(tmp_path / n).read_text() for n in ("a.json", "b.json")] == ["old a", "old b"]
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json"]


def test_write_all_changes_no_output_when_one_write_fails(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text("old a")
    (tmp_path / "c.json").write_text("old c")
    real_fdopen = files.os.fdopen
    opened = []

    def failing_third(fd, mode):
        opened.append(fd)
        if len(opened) == 3:
            raise OSError(28, "No space left on device")
        return real_fdopen(fd, mode)

    monkeypatch.setattr(files.os, "fdopen", failing_third)
    outputs = {tmp_path / "a.json": b"new a", tmp_path / "b.json": b"new b",
               tmp_path / "c.json": b"new c"}
    with pytest.raises(PipelineError, match=r"c\.json: cannot write: No space left on device"):
        files.write_all(outputs)
    assert (tmp_path / "a.json").read_text() == "old a"
    assert (tmp_path / "c.json").read_text() == "old c"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "c.json"]
    monkeypatch.undo()
    files.write_all(outputs)
    assert [(tmp_path / n).read_bytes() for n in ("a.json", "b.json", "c.json")] == [
        b"new a", b"new b", b"new c"]
