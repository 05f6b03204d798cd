"""Rebuild plots/template.html: plots/page.html with the Vega builds pinned in
plots/vendor.json inlined, each checked against its npm tarball integrity and file SHA-256.

Run from the repository root: python plots/make_template.py (needs npm and the npm registry).
"""

import base64
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# An empty <script data-package="NAME@VERSION"></script> in page.html marks where a build goes.
MARKER = re.compile(r'<script data-package="([^"@]+)@([^"]+)"></script>')


def packed_file(name: str, pin: dict, scratch: Path) -> str:
    """The pinned build file of one package, from a freshly packed and verified tarball."""
    subprocess.run(["npm", "pack", "--silent", f"{name}@{pin['version']}"], cwd=scratch,
                   check=True, stdout=subprocess.DEVNULL)
    tarball = scratch / f"{name}-{pin['version']}.tgz"
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != pin["integrity"]:
        sys.exit(f"{tarball.name}: integrity sha512-{digest}, pinned {pin['integrity']}")
    with tarfile.open(tarball) as archive:
        # extractfile on the one named member: nothing is written from the archive's paths.
        data = archive.extractfile(f"package/{pin['file']}").read()
    if hashlib.sha256(data).hexdigest() != pin["sha256"]:
        sys.exit(f"{name}/{pin['file']}: SHA-256 differs from the pinned one")
    text = data.decode()
    # Inline, these would end the <script> element or switch the HTML parser's script state.
    if re.search(r"</script|<!--", text, re.IGNORECASE):
        sys.exit(f"{name}/{pin['file']}: cannot be inlined in a <script> element")
    return text


def main() -> None:
    pins = json.loads((HERE / "vendor.json").read_text())
    page = (HERE / "page.html").read_text()
    with tempfile.TemporaryDirectory() as scratch:
        builds = {name: packed_file(name, pin, Path(scratch)) for name, pin in pins.items()}

    def inline(match: re.Match) -> str:
        name, version = match.groups()
        if pins[name]["version"] != version:
            sys.exit(f"page.html asks for {name}@{version}, vendor.json pins "
                     f"{pins[name]['version']}")
        return f'<script data-package="{name}@{version}">{builds[name]}</script>'

    (HERE / "template.html").write_text(MARKER.sub(inline, page))


if __name__ == "__main__":
    main()
