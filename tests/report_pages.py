"""Checks of a written report shared by the unit and e2e tests: the URLs a page would load,
the page in headless Chromium (its console), and the PDF's first page as PNG (pdftoppm)."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
from pathlib import Path

# Attributes that make a browser (or WeasyPrint) load something.
_LOADING = {"src", "href", "xlink:href", "srcset", "poster", "data", "action", "formaction"}


class _References(html.parser.HTMLParser):
    """Every URL the page would load, and every CSS url() or @import in it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._style = tag == "style"
        for name, value in attrs:
            if name in _LOADING and value and not value.startswith(("#", "data:")):
                self.found.append(f"{tag} {name}={value}")
            if name == "style" and value:
                self._css(value)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self._style = False

    def handle_data(self, data: str) -> None:
        if self._style:
            self._css(data)

    def _css(self, text: str) -> None:
        for url in re.findall(r"url\(\s*['\"]?([^'\")]*)", text):
            if not url.startswith(("#", "data:")):
                self.found.append(f"css url({url})")
        if "@import" in text:
            self.found.append("css @import")


def external_references(text: str) -> list[str]:
    parser = _References()
    parser.feed(text)
    parser.close()
    return parser.found


def chromium_console(page_file: Path, screenshot: Path) -> list[str]:
    """Open ``page_file`` in headless Chromium, save a screenshot, return its console lines.

    Chromium is kept off the network: every host name resolves to nothing and every proxied
    request goes to a closed loopback port; background services are off.
    """
    browser = shutil.which("chromium")
    assert browser is not None
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
            f"--screenshot={screenshot}",
            page_file.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert screenshot.exists(), result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def first_page_png(document: Path) -> Path:
    """The PDF's first page rendered by poppler's ``pdftoppm`` at 60 dpi, beside it."""
    pdftoppm = shutil.which("pdftoppm")
    assert pdftoppm is not None
    prefix = document.with_name(document.stem + "-page")
    subprocess.run(
        [
            pdftoppm,
            "-png",
            "-r",
            "60",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(document),
            str(prefix),
        ],
        check=True,
        timeout=120,
    )
    return prefix.with_suffix(".png")
