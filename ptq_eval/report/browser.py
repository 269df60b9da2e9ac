"""See a report the way a person does: headless Chromium renders the HTML to a screenshot and a DOM dump.

Chromium is Debian's `chromium` package (`apt-get install chromium`); nothing here fetches from the network.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from matplotlib import image as mpimg

from ptq_eval.errors import UserError

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--run-all-compositor-stages-before-draw",
    "--virtual-time-budget=5000",
)


@dataclass(frozen=True)
class Rendering:
    screenshot: Path
    images: int  # <img> elements in the rendered DOM
    embedded_images: int  # of them, data: URIs (a self-contained page fetches nothing)
    tables: int
    table_rows: int  # body rows, all tables together
    scripts: int  # <script> elements (a report has none: any would be injected)
    colored_fraction: float  # screenshot pixels with clear colour (plots drawn), 0..1


class _Counter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.counts = {"img": 0, "data_img": 0, "table": 0, "tr_body": 0, "script": 0}
        self._in_body = 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.counts["img"] += 1
            self.counts["data_img"] += str(dict(attrs).get("src", "")).startswith("data:image/")
        elif tag in ("table", "script"):
            self.counts[tag] += 1
        elif tag == "tbody":
            self._in_body += 1
        elif tag == "tr" and self._in_body:
            self.counts["tr_body"] += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body -= 1


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=180).stdout
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"chromium failed ({error.returncode}): {error.stderr.strip()[-500:]}") from None


def colored_fraction(png: Path) -> float:
    """Share of pixels whose channels differ by more than 0.15 (not white, grey or black text)."""
    pixels = mpimg.imread(png)[..., :3]
    return float(((pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.15).mean())


def render(html_file: str | Path, screenshot: str | Path, width: int = 1400, height: int = 9000) -> Rendering:
    """Render `html_file` headless; write the screenshot (top `height` pixels) and count what the DOM holds."""
    browser = chromium()
    if browser is None:
        raise UserError("headless Chromium is not installed: apt-get install chromium")
    url = Path(html_file).resolve().as_uri()
    screenshot = Path(screenshot).resolve()
    with tempfile.TemporaryDirectory() as profile:
        common = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        _run([*common, f"--screenshot={screenshot}", url])
        dom = _run([*common, "--dump-dom", url])
    counter = _Counter()
    counter.feed(dom)
    c = counter.counts
    return Rendering(
        screenshot, c["img"], c["data_img"], c["table"], c["tr_body"], c["script"], colored_fraction(screenshot)
    )


def shows_all(rendering: Rendering, figures: int, table_rows: int) -> list[str]:
    """What a person would miss in the rendering (empty when every figure and table row is there)."""
    problems = []
    if rendering.embedded_images != figures or rendering.images != figures:
        problems.append(f"{rendering.images} images ({rendering.embedded_images} embedded), expected {figures}")
    if rendering.table_rows != table_rows:
        problems.append(f"{rendering.table_rows} table rows, expected {table_rows}")
    if rendering.scripts:
        problems.append(f"{rendering.scripts} <script> elements in a page that should have none")
    if figures and rendering.colored_fraction < 0.005:
        problems.append(f"only {rendering.colored_fraction:.2%} coloured pixels: the plots did not draw")
    return problems
