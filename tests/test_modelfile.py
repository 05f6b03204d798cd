import zipfile

import numpy as np
import pytest

from stages import modelfile, network
from stages.errors import PipelineError


@pytest.fixture
def layers():
    return network.init_layers([784, 16, 8, 10], np.random.default_rng(0))


def test_round_trip_without_pickle(tmp_path, layers):
    (tmp_path / "model.npz").write_bytes(modelfile.encode(*layers, "relu"))
    weights, biases, activation = modelfile.load(tmp_path / "model.npz")
    assert activation == "relu"
    for got, want in zip(weights + biases, layers[0] + layers[1], strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    with zipfile.ZipFile(tmp_path / "model.npz") as archive:
        assert sorted(archive.namelist()) == sorted(
            ["activation.npy", "W0.npy", "b0.npy", "W1.npy", "b1.npy", "W2.npy", "b2.npy"])


def test_truncated_model_is_rejected(tmp_path, layers):
    (tmp_path / "model.npz").write_bytes(modelfile.encode(*layers, "relu"))
    data = (tmp_path / "model.npz").read_bytes()
    (tmp_path / "model.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match=r"model\.npz: not a readable model file"):
        modelfile.load(tmp_path / "model.npz")


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "model.npz").write_bytes(b"not a zip at all")
    with pytest.raises(PipelineError, match=r"not a model \(\.npz\) file \(it starts 6e6f7420\)"):
        modelfile.load(tmp_path / "model.npz")
    with pytest.raises(PipelineError, match=r"other\.npz: not found"):
        modelfile.load(tmp_path / "other.npz")


def test_object_arrays_are_refused(tmp_path, layers):
    np.savez(tmp_path / "model.npz", W0=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(PipelineError, match="not a readable model file"):
        modelfile.load(tmp_path / "model.npz")


def test_layers_that_do_not_chain(tmp_path, layers):
    weights, biases = layers
    weights[1] = np.zeros((15, 8), np.float32)
    (tmp_path / "model.npz").write_bytes(modelfile.encode(weights, biases, "relu"))
    with pytest.raises(PipelineError, match=r"layer 1 shapes W\(15, 8\) b\(8,\) do not chain"):
        modelfile.load(tmp_path / "model.npz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["W", "b"])
def test_parameters_that_are_not_finite(tmp_path, layers, bad, where):
    weights, biases = layers
    (weights if where == "W" else biases)[2][0] = bad
    (tmp_path / "model.npz").write_bytes(modelfile.encode(weights, biases, "relu"))
    with pytest.raises(PipelineError, match=r"model\.npz: layer 2 holds NaN or infinite numbers, "
                                            "expected finite ones"):
        modelfile.load(tmp_path / "model.npz")


def test_weights_that_are_not_numbers(tmp_path):
    np.savez(tmp_path / "m.npz", activation=np.array("relu"), W0=np.array([["a"]]),
             b0=np.zeros(1, np.float32))
    with pytest.raises(PipelineError, match="layer 0 is not float32 arrays"):
        modelfile.load(tmp_path / "m.npz")
    np.savez(tmp_path / "m.npz", activation=np.array("relu"), W0=np.zeros((2, 1)),
             b0=np.zeros(1))
    with pytest.raises(PipelineError, match="layer 0 is not float32 arrays"):
        modelfile.load(tmp_path / "m.npz")


def test_names_that_only_start_like_layers(tmp_path, layers):
    np.savez(tmp_path / "m.npz", activation=np.array("relu"), W0=layers[0][0],
             b0=layers[1][0], Wx=layers[0][0])
    with pytest.raises(PipelineError, match=r"unexpected contents \['Wx'\]"):
        modelfile.load(tmp_path / "m.npz")


def test_missing_bias_and_unknown_activation(tmp_path, layers):
    np.savez(tmp_path / "a.npz", activation=np.array("relu"), W0=layers[0][0])
    with pytest.raises(PipelineError, match=r"a\.npz: model file lacks b0"):
        modelfile.load(tmp_path / "a.npz")
    (tmp_path / "b.npz").write_bytes(modelfile.encode(*layers, "swish"))
    with pytest.raises(PipelineError, match=r"b\.npz: unknown activation 'swish'"):
        modelfile.load(tmp_path / "b.npz")
