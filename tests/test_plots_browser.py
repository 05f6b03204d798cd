"""`dvc plots show` gives a page that renders every plot with no network: the Vega builds are
inlined from plots/template.html, which must hold exactly the pinned npm files.

The page is opened in headless Chromium with every name lookup failing and every connection
sent to a closed local port; the test is skipped only where Chromium is not installed.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from dvc_render.vega import VegaRenderer
from PIL import Image

from stages import modelfile, network
from stages.files import save_npy

ROOT = Path(__file__).parents[1]
PLOTS = ROOT / "plots"
PINS = json.loads((PLOTS / "vendor.json").read_text())
INLINED = re.compile(r'<script data-package="([^"@]+)@([^"]+)">(.*?)</script>', re.DOTALL)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps",
    # No name resolves and every connection, loopback included, goes to a closed port.
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    # Virtual time runs the page's scripts and loads to completion before the DOM is dumped.
    "--virtual-time-budget=20000",
]


def test_template_inlines_exactly_the_pinned_builds():
    template = (PLOTS / "template.html").read_text()
    inlined = INLINED.findall(template)
    assert [name for name, _, _ in inlined] == list(PINS)
    for name, version, code in inlined:
        assert version == PINS[name]["version"]
        assert hashlib.sha256(code.encode()).hexdigest() == PINS[name]["sha256"], name
    # Outside the scripts the template is plots/page.html, which make_template.py fills.
    emptied = INLINED.sub(lambda m: f'<script data-package="{m[1]}@{m[2]}"></script>', template)
    assert emptied == (PLOTS / "page.html").read_text()
    assert "{plot_divs}" in template
    # Without a {scripts} placeholder dvc-render has nowhere to put its CDN <script> tags.
    assert "{scripts}" not in template


def test_pins_are_the_versions_dvc_render_would_load():
    cdn = dict(re.findall(r"npm/([a-z-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert cdn == {name: pin["version"] for name, pin in PINS.items()}


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class PageParts(HTMLParser):
    """Scripts, images and the Vega views (canvas or svg inside a vega-embed div) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.script_sources: list[str | None] = []
        self.images: list[dict[str, str | None]] = []
        self.views: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # (tag, inside a vega-embed div)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        inside = bool(self.stack and self.stack[-1][1])
        if tag == "div" and "vega-embed" in (attributes.get("class") or "").split():
            inside = True
        if tag == "script":
            self.script_sources.append(attributes.get("src"))
        elif tag == "img":
            self.images.append(attributes)
        elif tag in ("canvas", "svg") and inside and "marks" in (attributes.get("class") or ""):
            self.views.append(f"{tag} {attributes.get('width')}x{attributes.get('height')}")
        if tag not in VOID:
            self.stack.append((tag, inside))

    def handle_endtag(self, tag: str) -> None:
        if any(open_tag == tag for open_tag, _ in self.stack):
            while self.stack.pop()[0] != tag:
                pass


def parts(html: str) -> PageParts:
    parser = PageParts()
    parser.feed(html)
    return parser


def isolated_env(scratch: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DVC_")}
    env.update({"DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "true",
                "DVC_GLOBAL_CONFIG_DIR": str(scratch / "dvc-global"),
                "DVC_SYSTEM_CONFIG_DIR": str(scratch / "dvc-system"),
                "DVC_SITE_CACHE_DIR": str(scratch / "dvc-site-cache"),
                "PYTHONPATH": str(ROOT)})
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def write_evaluated_project(repo: Path, env: dict[str, str]) -> None:
    """The project's plot config, and the files its plots read, from a real evaluate run
    on a tiny model and data plus a three-epoch history."""
    shutil.copy2(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "plots").mkdir()
    shutil.copy2(PLOTS / "template.html", repo / "plots" / "template.html")
    shutil.copy2(ROOT / "params.yaml", repo / "params.yaml")
    rng = np.random.default_rng(0)
    for split, rows in (("train", 30), ("val", 10), ("test", 40)):
        save_npy(repo / "data" / f"x_{split}.npy", rng.random((rows, 784), np.float32))
        save_npy(repo / "data" / f"y_{split}.npy",
                 np.eye(10, dtype=np.float32)[rng.integers(0, 10, rows)])
    weights, biases = network.init_layers([784, 10, 10], rng)
    (repo / "model.npz").write_bytes(modelfile.encode(weights, biases, "relu"))
    run([sys.executable, "-m", "stages.evaluate", "--data", "data", "--model", "model.npz",
         "--out", "metrics"], repo, env)
    (repo / "metrics" / "history.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc\n"
        "1,0.9,0.70,0.8,0.72\n2,0.5,0.85,0.6,0.80\n3,0.3,0.91,0.4,0.88\n")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.html as `dvc plots show -o` writes it, in a scratch DVC repo."""
    scratch = tmp_path_factory.mktemp("plots")
    repo = scratch / "repo"
    repo.mkdir()
    env = isolated_env(scratch)
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], repo, env)
    write_evaluated_project(repo, env)
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(scratch / "out")], repo, env)
    return scratch / "out" / "index.html"


def expected_plots() -> tuple[int, list[str]]:
    """(number of Vega plots, image paths) that dvc.yaml's top-level plots define."""
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    images = [p for p in plots if isinstance(p, str) and p.endswith(".png")]
    return len(plots) - len(images), images


def test_the_page_needs_nothing_from_outside(page):
    html = page.read_text()
    found = parts(html)
    assert found.script_sources
    assert all(src is None for src in found.script_sources)
    assert [name for name, _, _ in INLINED.findall(html)] == list(PINS)
    _, images = expected_plots()
    sources = sorted(image["src"] for image in found.images)
    assert sources == sorted(f"static/workspace_{path.replace('/', '_')}" for path in images)
    for image in found.images:
        assert (page.parent / image["src"]).is_file()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_every_plot_renders_offline_in_chromium(page, tmp_path):
    # The load event fires once every image has loaded or failed; record which.
    probe = page.with_name("probe.html")
    # The last </body>: the inlined Vega code holds that string too.
    head, body_end, tail = page.read_text().rpartition("</body>")
    probe.write_text(head + """<script>
window.addEventListener("load", () => {
  for (const img of document.images)
    img.setAttribute("data-loaded", img.naturalWidth ? img.naturalWidth + "x" +
                     img.naturalHeight : "failed");
});
</script>""" + body_end + tail)
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         probe.as_uri()], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    dom = parts(result.stdout)

    vega_plots, images = expected_plots()
    assert len(dom.views) == vega_plots, dom.views
    for view in dom.views:
        width, height = map(int, view.split()[1].split("x"))
        assert min(width, height) > 100, view
    sizes = {}
    for path in images:
        src = f"static/workspace_{path.replace('/', '_')}"
        with Image.open(page.parent / src) as picture:
            sizes[src] = "{}x{}".format(*picture.size)
    assert {image["src"]: image.get("data-loaded") for image in dom.images} == sizes
