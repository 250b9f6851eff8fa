"""The console's assets: everything the page loads is in the package and nothing comes from elsewhere."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch

from gateway.console import STATIC_DIR
from tests.conftest import ROOT


def test_every_asset_the_page_loads_is_shipped():
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html)
    assert {r.rsplit("/", 1)[1] for r in refs} == {"app.js", "console.css"}
    for ref in refs:
        assert (STATIC_DIR / ref.removeprefix("/ui/static/")).is_file(), ref
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway.console"]
    for path in STATIC_DIR.iterdir():
        assert any(fnmatch(f"static/{path.name}", p) for p in patterns), f"{path.name} is not in the wheel's package-data"


def test_no_asset_reaches_outside_the_gateway():
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        # The SVG namespace is an identifier, not a request.
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{path.name} refers to {urls}"
        assert "@import" not in text and "fonts.googleapis" not in text
