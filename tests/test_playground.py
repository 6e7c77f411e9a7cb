"""The playground page as the frontend serves it, in process: where it lives, that it loads without an API key
while the API still wants one, and that it needs nothing from anywhere else (it works offline).

What the page does in a browser is tested in ``test_playground_browser.py``, in Chromium against the real stack.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openai_frontend.app import create_app
from openai_frontend.context import FrontendSettings
from openai_frontend.routers.playground import PAGE_DIR

KEY = "playground-key"
FILES = {"index.html": "text/html", "playground.js": "javascript", "playground.css": "text/css"}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """The app with API keys; its lifespan (the Triton client) is not started, since no page needs Triton."""
    settings = FrontendSettings(fs_url=f"file://{tmp_path}/media", state_dir=str(tmp_path), api_keys=(KEY,))
    return TestClient(create_app(settings), follow_redirects=False)


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_the_root_leads_to_the_page(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (301, 307)
    assert response.headers["location"].endswith("/playground/")


def test_the_page_loads_without_a_key_and_the_api_still_wants_one(client: TestClient) -> None:
    page = client.get("/playground/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, content_type in FILES.items():
        response = client.get(f"/playground/{name}")
        assert response.status_code == 200 and content_type in response.headers["content-type"], name
    assert client.get("/v1/models").status_code == 401
    assert client.get("/playgroundx").status_code == 401  # only the page's own paths are open
    missing = client.get("/playground/nothing.js")
    assert missing.status_code == 404 and "message" in missing.json()["error"]  # OpenAI's error shape


def test_the_page_needs_nothing_from_elsewhere() -> None:
    """Offline: no absolute URL anywhere, and every file the HTML names is one the frontend serves."""
    assert {p.name for p in PAGE_DIR.iterdir()} == set(FILES)
    for name in FILES:
        text = (PAGE_DIR / name).read_text()
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", text), f"{name} refers to another host"
        assert "@import" not in text and "url(" not in text, name
    linked = re.findall(r'(?:src|href)="([^"]+)"', (PAGE_DIR / "index.html").read_text())
    assert sorted(linked) == ["playground.css", "playground.js"]
