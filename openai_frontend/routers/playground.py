"""The playground: a web page, served by the frontend itself, to try every model in a browser.

The page is three static files (``openai_frontend/playground/``: HTML, one JavaScript module, one stylesheet)
shipped as package data: no build step, nothing fetched from elsewhere, so it works offline. It speaks only
the public API, with the user's API key from the browser's session storage when the server wants one, which is
why the files themselves are open (``security.OPEN_PATHS``): a browser must be able to load the page that asks
for the key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parent.parent / "playground"
PAGE_PATH = "/playground"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    """``/`` is where a person lands after starting the server: send them to the page."""
    return RedirectResponse(f"{PAGE_PATH}/", status_code=307)


def mount_playground(app: FastAPI) -> None:
    """Serve the page's files under ``/playground/`` (``index.html`` for the folder itself)."""
    app.include_router(router)
    app.mount(PAGE_PATH, StaticFiles(directory=PAGE_DIR, html=True), name="playground")
