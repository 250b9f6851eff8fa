"""The web console (GET /ui): one HTML page, one JS module and a stylesheet, served by the gateway.

The page is static: the browser calls the gateway's public API itself (/v1/models, predict,
explain, report) and sends the user's API key from its own tab storage, so the gateway neither
renders data for the console nor ever stores a key for it. No CDN: everything is in `static/`,
shipped in the wheel (pyproject.toml package-data), and the Content-Security-Policy below lets the
page load nothing from anywhere else.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
UI_PATH = "/ui"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _Revalidated(StaticFiles):
    """Assets are revalidated (ETag) on every load: an upgraded gateway never runs a stale app.js."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_console(app: FastAPI) -> None:
    app.mount(f"{UI_PATH}/static", _Revalidated(directory=STATIC_DIR), name="console-static")

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse(UI_PATH)

    @app.get(UI_PATH, include_in_schema=False)
    async def console():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})
