"""dvc.yaml must name every module a stage runs and every parameter it reads, or DVC would
skip a stage whose behaviour changed."""

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from stages import params

ROOT = Path(__file__).parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(module: str) -> set[str]:
    """`module`, the package's __init__ (which `python -m stages.x` runs first) and every
    stages.* module they import, transitively."""
    seen, todo = set(), [module, "__init__"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((ROOT / "stages" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "stages":
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("stages.")]
    return seen


@pytest.mark.parametrize("stage", sorted(PIPELINE))
def test_stage_code_deps_are_exactly_what_it_imports(stage):
    code_deps = {dep for dep in PIPELINE[stage]["deps"] if dep.startswith("stages/")}
    assert code_deps == {f"stages/{m}.py" for m in imported_modules(stage)}
    assert PIPELINE[stage]["cmd"].startswith(f"python -m stages.{stage} ")


def params_read(stage: str) -> set[str]:
    """Every `params.<key>` the stage module reads, as `<stage>.<key>`."""
    tree = ast.parse((ROOT / "stages" / f"{stage}.py").read_text())
    return {f"{stage}.{node.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "params"}


@pytest.mark.parametrize("stage", ["preprocess", "evaluate"])
def test_stage_params_are_exactly_the_keys_it_reads(stage):
    section = {f"{stage}.{f.name}" for f in dataclasses.fields(getattr(params, stage.title()))}
    assert params_read(stage) == section
    assert set(PIPELINE[stage]["params"]) == section


def test_train_tracks_its_whole_section():
    # The stage hands the whole section to the trainer: any key of it can change the model.
    source = (ROOT / "stages" / "train.py").read_text()
    assert "training.train(flat, sizes, train_set, val_set, params," in source
    assert PIPELINE["train"]["params"] == ["train"]


def test_fetch_tracks_only_what_can_change_its_output():
    # Where the verified bytes come from cannot change them, so those keys are not params;
    # the test split of a Kaggle CSV can. The local directory is a path dependency instead,
    # so DVC reruns fetch when your own data in it changes.
    read = params_read("fetch")
    tracked = {"fetch.verify", "fetch.test_size", "fetch.split_seed"}
    assert set(PIPELINE["fetch"]["params"]) == tracked
    assert read - tracked == {"fetch.sources", "fetch.mirrors", "fetch.local_dir"}
    assert "${fetch.local_dir}" in PIPELINE["fetch"]["deps"]


def test_metrics_are_small_files_kept_in_git():
    for stage in PIPELINE.values():
        for entry in stage.get("metrics", []):
            ((path, options),) = entry.items()
            assert options == {"cache": False}, path
