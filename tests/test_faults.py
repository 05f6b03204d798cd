"""Faults: every stage killed with SIGKILL at random moments and at each of its writes, a
download killed mid-way, and `dvc repro` itself killed. After each kill no output may be
partial (each is its older bytes or the finished new ones), and `dvc repro` must bring back
exactly a clean run's bytes with no temporary file left beside the outputs.

One git + DVC repository on synthetic data (tests/test_reproducible.py builds it) serves the
whole module; every test leaves it as the clean run left it. Kill times come from seeded
generators, so a failure replays.
"""

import gzip
import hashlib
import http.server
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_pipeline import Repo, write_synthetic
from test_reproducible import build_repo, snapshot

from stages import mnist

KILLS_PER_STAGE = 8
DVC_KILLS = 4
STAGES = ("fetch", "preprocess", "train", "evaluate")
OLDER = b"an older output\n"
# The steps of writing an output (an array's bytes going out, fsync, rename) and fetch's
# staging writes: killing the process at the n-th such call stops it at every point where an
# output is half made.
KILL_AT_WRITE = """
import itertools, os, pathlib, signal
import numpy as np
calls = itertools.count(1)
def killed_at(step, real):
    def call(*args, **kwargs):
        if next(calls) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
os.fsync = killed_at({step}, os.fsync)
os.replace = killed_at({step}, os.replace)
pathlib.Path.rename = killed_at({step}, pathlib.Path.rename)
pathlib.Path.write_bytes = killed_at({step}, pathlib.Path.write_bytes)
np.lib.format.write_array = killed_at({step}, np.lib.format.write_array)
"""


@dataclass
class Pipeline:
    repo: Repo
    golden: dict[str, str]  # snapshot() of the clean run
    commands: dict[str, list[str]]  # each stage's command from dvc.yaml
    outs: dict[str, list[str]]  # each stage's outputs and metrics files
    seconds: dict[str, float]  # each stage's command, timed once
    whole_run: float  # the first `dvc repro`, timed


def stage_outputs(stage: dict) -> list[str]:
    entries = stage.get("outs", []) + stage.get("metrics", [])
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    repo = build_repo(tmp_path_factory.mktemp("faults"))
    started = time.perf_counter()
    repo.dvc("repro")
    whole_run = time.perf_counter() - started
    stages = yaml.safe_load((repo.path / "dvc.yaml").read_text())["stages"]
    commands = {name: shlex.split(stage["cmd"]) for name, stage in stages.items()}
    seconds = {}
    for name, command in commands.items():
        started = time.perf_counter()
        subprocess.run(command, cwd=repo.path, env=repo.env, check=True, capture_output=True)
        seconds[name] = time.perf_counter() - started
    # Committed, so the documented recovery from a cut-short dvc.lock has something to restore.
    subprocess.run(["git", "add", "-A"], cwd=repo.path, env=repo.env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "clean run"], cwd=repo.path, env=repo.env,
                   check=True)
    return Pipeline(repo, snapshot(repo.path), commands,
                    {name: stage_outputs(stage) for name, stage in stages.items()}, seconds,
                    whole_run)


def make_older(pipe: Pipeline, stage: str) -> dict[str, str]:
    """Replace the stage's outputs with older ones (other bytes); return their snapshot."""
    for out in pipe.outs[stage]:
        path = pipe.repo.path / out
        if any(name.startswith(f"{out}/") for name in pipe.golden):  # a directory output
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            (path / "older").write_bytes(OLDER)
        else:
            path.write_bytes(OLDER)
    return snapshot(pipe.repo.path, tuple(pipe.outs[stage]))


def leftovers(pipe: Pipeline) -> list[str]:
    """Temporary files or directories of a write that never finished; what lies inside a
    stray staging directory goes with it, so only the outermost stray is listed."""
    roots = [pipe.repo.path / top for top in ("data", "models", "metrics")]
    strays = {path.relative_to(pipe.repo.path) for root in roots
              for pattern in (".*.tmp", ".*.old") for path in root.rglob(pattern)}
    return sorted(str(path) for path in strays if not strays.intersection(path.parents))


def outcome(pipe: Pipeline, stage: str, older: dict[str, str]) -> str:
    """'older', 'new' or 'mixed' (some outputs each): after a kill each output must be whole,
    either as it was or as a clean run writes it. A directory may be missing only while its
    older self waits beside it (killed between the two renames), which DVC treats as missing."""
    states = set()
    for out in pipe.outs[stage]:
        now = snapshot(pipe.repo.path, (out,))
        mine = {name: digest for name, digest in older.items() if name.startswith(out)}
        clean = {name: digest for name, digest in pipe.golden.items() if name.startswith(out)}
        path = pipe.repo.path / out
        if not path.exists():
            assert list(path.parent.glob(f".{path.name}.*.old")), f"{out} vanished"
            states.add("older")
            continue
        assert now in (mine, clean), f"{out} is neither its older nor its new self: {now}"
        states.add("older" if now == mine else "new")
    return states.pop() if len(states) == 1 else "mixed"


def recover(pipe: Pipeline) -> None:
    """`dvc repro`, then the clean run's exact bytes (dvc.lock included, so DVC agrees).
    A stage DVC restores from its run cache instead of running does not tidy up, so a killed
    write's temporary can stay beside its output until the stage next writes it: hidden,
    never read, and never inside an output directory. Any other leftover is a failure; the
    allowed ones are deleted here, so the next test starts from a clean workspace."""
    log = pipe.repo.dvc("repro").stdout
    assert snapshot(pipe.repo.path) == pipe.golden
    for path in leftovers(pipe):
        stray = Path(path)
        owner = next((stage for stage, outs in pipe.outs.items() for out in outs
                      if Path(out).parent == stray.parent
                      and stray.name.startswith(f".{Path(out).name}.")), None)
        assert owner, f"{path}: inside an output, or of no stage's output"
        assert f"Stage '{owner}' is cached - skipping run" in log, f"{path} left:\n{log}"
        shutil.rmtree(pipe.repo.path / stray, ignore_errors=True)
        (pipe.repo.path / stray).unlink(missing_ok=True)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_killed_at_random_moments(pipeline: Pipeline, stage: str, record_property) -> None:
    pipe, rng = pipeline, random.Random(f"kill {stage}")
    seen = []
    for _ in range(KILLS_PER_STAGE):
        older = make_older(pipe, stage)
        process = subprocess.Popen(pipe.commands[stage], cwd=pipe.repo.path, env=pipe.repo.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delay = rng.uniform(0, 1.2 * pipe.seconds[stage])
        try:
            process.wait(delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        seen.append(f"{delay:.2f}s:{outcome(pipe, stage, older)}")
    record_property("kills", ", ".join(seen))
    # As a kill before the writes leaves it, so that `dvc repro` must run the stage again;
    # after a kill that came later, the outputs are finished and DVC rightly skips it.
    make_older(pipe, stage)
    recover(pipe)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_killed_at_each_write(pipeline: Pipeline, stage: str, record_property) -> None:
    pipe, outcomes = pipeline, []
    for step in range(1, 60):
        older = make_older(pipe, stage)
        prelude = KILL_AT_WRITE.format(step=step)
        module = pipe.commands[stage][2]  # python -m stages.X ...
        code = f"{prelude}\nimport runpy\nrunpy.run_module({module!r}, run_name='__main__')"
        result = subprocess.run([sys.executable, "-c", code, *pipe.commands[stage][3:]],
                                cwd=pipe.repo.path, env=pipe.repo.env, capture_output=True,
                                text=True, check=False)
        if result.returncode == 0:  # every write point passed: the stage finished
            break
        assert result.returncode == -signal.SIGKILL, result.stderr
        outcomes.append(outcome(pipe, stage, older))
    record_property("kills", f"{len(outcomes)} write points: {', '.join(outcomes)}")
    assert result.returncode == 0, "more write points than expected"
    assert "older" in outcomes  # the early kills left the old outputs whole
    # The finished run wrote the clean bytes and tidied what the killed ones left, so DVC
    # finds the stage up to date.
    assert snapshot(pipe.repo.path) == pipe.golden
    assert leftovers(pipe) == []


def test_dvc_repro_killed_at_random_moments(pipeline: Pipeline, record_property) -> None:
    """Killing DVC itself can also cut dvc.lock short: DVC rewrites it in place. The
    documented recovery then restores the committed lock before `dvc repro`."""
    pipe, rng = pipeline, random.Random("kill dvc repro")
    lock_cut_short = 0
    for _ in range(DVC_KILLS):
        process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--force"],
                                   cwd=pipe.repo.path, env=pipe.repo.env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(rng.uniform(0, pipe.whole_run))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for stage in STAGES:  # whatever DVC was doing, no output is half written
            for out in pipe.outs[stage]:
                now = snapshot(pipe.repo.path, (out,))
                clean = {k: v for k, v in pipe.golden.items() if k.startswith(out)}
                assert now in ({}, clean), f"{out} is partial after killing dvc repro"
        lock = pipe.repo.path / "dvc.lock"
        if hashlib.sha256(lock.read_bytes()).hexdigest() != pipe.golden["dvc.lock"]:
            lock_cut_short += 1
            subprocess.run(["git", "checkout", "--", "dvc.lock"], cwd=pipe.repo.path,
                           env=pipe.repo.env, check=True)
    record_property("kills", f"{DVC_KILLS} kills, dvc.lock cut short by {lock_cut_short}")
    recover(pipe)


# ---------------------------------------------------------------------------- downloads


class SlowMirror:
    """Serves NAME.gz slowly (4 KiB every 10 ms) until `fast` is set; `sent` is set once
    64 KiB of one file have gone out; every request's Range header is kept."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.bodies = {f"/{name}.gz": gzip.compress(data, mtime=0) for name, data in files.items()}
        self.fast, self.sent, self.ranges = threading.Event(), threading.Event(), []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.ranges.append(self.headers.get("Range"))
                body = owner.bodies[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for start in range(0, len(body), 4096):
                    try:
                        self.wfile.write(body[start:start + 4096])
                    except OSError:  # the client was killed
                        return
                    if start >= 65536:
                        owner.sent.set()
                    if not owner.fast.is_set():
                        time.sleep(0.01)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"


@pytest.fixture
def slow_mirror(tmp_path: Path) -> Iterator[tuple[SlowMirror, dict[str, bytes]]]:
    files = write_synthetic(tmp_path / "synthetic")
    mirror = SlowMirror(files)
    thread = threading.Thread(target=mirror.httpd.serve_forever,
                              kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield mirror, files
    mirror.fast.set()
    mirror.httpd.shutdown()
    mirror.httpd.server_close()


def fetch_command(files: dict[str, bytes]) -> list[str]:
    """The fetch stage, expecting the synthetic files' hashes in place of the official ones."""
    checksums = {name: tuple(mnist.Checksum(hashlib.md5(data).hexdigest(),
                                            hashlib.sha256(data).hexdigest()))
                 for name, data in files.items()}
    code = (f"from stages import mnist\n"
            f"mnist.OFFICIAL.update({{k: mnist.Checksum(*v) for k, v in {checksums!r}.items()}})\n"
            f"import runpy\nrunpy.run_module('stages.fetch', run_name='__main__')")
    return [sys.executable, "-c", code, "--out", "raw"]


def test_download_killed_mid_way_then_fetched_whole(
    tmp_path: Path, slow_mirror: tuple[SlowMirror, dict[str, bytes]],
) -> None:
    mirror, files = slow_mirror
    project, scratch = tmp_path / "project", tmp_path / "tmp"
    project.mkdir()
    scratch.mkdir()
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["fetch"].update(sources=["mirror"], mirrors=[mirror.url], verify=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "TMPDIR": str(scratch)}

    killed = subprocess.Popen(fetch_command(files), cwd=project, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert mirror.sent.wait(30), "the download never got going"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    partial = list(scratch.rglob("*.part"))
    assert len(partial) == 1, partial
    assert partial[0].stat().st_size > 0
    assert not (project / "raw").exists()

    mirror.fast.set()
    requests_before = len(mirror.ranges)
    result = subprocess.run(fetch_command(files), cwd=project, env=env, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "all 4 files verified" in result.stdout
    assert {path.name: path.read_bytes() for path in (project / "raw").iterdir()} == files
    # The killed run's partial file was not resumed: every new request started from zero.
    assert mirror.ranges[requests_before:] == [None] * 4
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml", "raw"]
