"""The hardening matrix: bad input, faults, hostile files and reproducibility, as one table.

    .venv/bin/python bench/hardening_report.py [extra pytest arguments]

Runs the tests that make up the matrix (tests/test_bad_input.py, test_faults.py,
test_reproducible.py and the hostile-file tests of test_sources.py) under pytest, reads its
JUnit XML, and prints one row per case: what was expected, what happened, and whether that
passed; then the totals. Exits 1 if any case failed.
"""

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = [
    "tests/test_bad_input.py",
    "tests/test_faults.py",
    "tests/test_reproducible.py",
    # Hostile wheels and pickles are tested where the pypi source is.
    "tests/test_sources.py::test_from_pypi_refuses_unsafe_member_paths",
    "tests/test_sources.py::test_from_pypi_refuses_a_hostile_pickle_and_runs_nothing",
    "tests/test_sources.py::test_load_arrays_refuses_callables_and_runs_nothing",
    "tests/test_sources.py::test_load_arrays_allows_only_the_numpy_array_rebuilders",
    "tests/test_download.py::test_download_refuses_a_redirect_off_https",
]
# What a case promises, for the tests that do not record it themselves.
EXPECTED = {
    "test_stage_killed_at_random_moments": "each output whole after every SIGKILL; then "
                                           "dvc repro gives the clean bytes, no leftovers",
    "test_stage_killed_at_each_write": "killed at every write step: each output whole; the "
                                       "finished run gives the clean bytes, no leftovers",
    "test_dvc_repro_killed_at_random_moments": "no output partial; dvc repro (after restoring "
                                               "a cut-short dvc.lock) gives the clean bytes",
    "test_download_killed_mid_way_then_fetched_whole": "partial download left outside the "
                                                       "output; next fetch from zero, verified",
    "test_two_repositories_give_byte_identical_outputs": "data/, models/, metrics/, dvc.lock "
                                                         "byte-identical",
    "test_another_seed_gives_another_model_and_the_same_data": "model and scores differ, "
                                                               "data identical",
    "test_tracked_outputs_never_hold_timings": "no time-like keys or columns",
    "test_outputs_do_not_depend_on_the_clock": "same bytes with the clock a day ahead per read",
    "test_machine_fingerprint_names_what_decides_the_kernels": "CPU, NumPy, SIMD, BLAS, "
                                                               "threads; 1 thread differs",
    "test_machine_record_applies_only_to_the_lock_it_was_written_with": "exact only for the "
                                                                        "recorded lock+machine",
    "test_the_scanner_finds_unsafe_loading": "snippet flagged",
    "test_the_product_never_loads_unsafely": "no pickle, allow_pickle, unsafe yaml, extract, "
                                             "eval in stages/",
    "test_committed_mirrors_are_https": "every committed mirror is https://",
    "test_full_disk_prelude_really_fails_writes": "the injected ENOSPC reaches the writes",
    "test_from_pypi_refuses_unsafe_member_paths": "wheel refused: unsafe member path",
    "test_from_pypi_refuses_a_hostile_pickle_and_runs_nothing": "pickle refused, payload "
                                                                "never runs",
    "test_load_arrays_refuses_callables_and_runs_nothing": "pickle refused, payload never runs",
    "test_load_arrays_allows_only_the_numpy_array_rebuilders": "anything else refused",
    "test_download_refuses_a_redirect_off_https": "redirect refused before any lookup",
}


def run_pytest(junit: Path, extra: list[str]) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-o", "junit_family=xunit1", f"--junitxml={junit}", *SUITES, *extra]
    subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL)


def rows(junit: Path) -> list[tuple[str, str, str, str]]:
    """(case, expected, got, result) per test case, in the order pytest ran them."""
    table = []
    for case in ET.parse(junit).iter("testcase"):
        name = case.get("name", "")
        function, _, param = name.partition("[")
        props = {p.get("name"): p.get("value", "") for p in case.iter("property")}
        problem = next((case.find(tag) for tag in ("failure", "error", "skipped")
                        if case.find(tag) is not None), None)
        result = "pass" if problem is None else problem.tag.replace("failure", "FAIL").replace(
            "error", "ERROR")
        got = props.get("got") or props.get("kills") or ("as expected" if problem is None else "")
        if problem is not None:
            got = (problem.get("message") or "").splitlines()[0] if problem.get("message") else got
        title = param.rstrip("]") if param and function.endswith("changes_nothing") else (
            function.removeprefix("test_").replace("_", " ") + (f" [{param}" if param else ""))
        suite = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("test_")
        table.append((f"{suite}: {title}", props.get("expected") or EXPECTED.get(function, ""),
                      got, result))
    return table


def cell(text: str, width: int = 120) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."


def focus(got: str, expected: str, width: int = 120) -> str:
    """A long error line from where the expected words start, so they show in the table."""
    words = expected.partition("one line: ")[2].split(" ... ")[0]
    at = got.find(words) if words else -1
    if len(got) <= width or at <= 0:
        return got
    return got.partition(": ")[0] + ": ..." + got[at:]


def main() -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        run_pytest(junit, sys.argv[1:])
        if not junit.exists():
            print("pytest wrote no report; run it directly to see why")
            return 1
        table = rows(junit)
    print("| # | case | expected | got | result |\n|---:|---|---|---|---|")
    for number, (case, expected, got, result) in enumerate(table, 1):
        print(f"| {number} | {cell(case, 60)} | {cell(expected)} | {cell(focus(got, expected))} "
              f"| {result} |")
    counts = {result: sum(row[3] == result for row in table) for result in
              ("pass", "FAIL", "ERROR", "skipped")}
    print(f"\n{len(table)} cases: " + ", ".join(f"{n} {result}" for result, n in counts.items())
          + f"; {time.perf_counter() - started:.0f} s")
    return 0 if counts["FAIL"] == counts["ERROR"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
