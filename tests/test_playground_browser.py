"""The playground in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright) against real
tritonserver + frontend processes serving the tiny image, video and text models, with an API key required.

Each test does what a person would and checks what they would see: images rendered at the size asked for, a
video's progress bar advancing before the video plays, chat text arriving block by block before the answer ends,
the stop button cancelling the generation on the server (the model's own cancellation counter), and the API's
message for bad input. Screenshots of each panel are written to ``test-artifacts/playground/`` (``TEST_ARTIFACTS``
moves the folder).
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright import sync_api as playwright

from diffusion_runtime.launcher.repository import PROJECT_ROOT
from tests.conftest import Stack, metric_value, start_stack, tiny_image_spec, tiny_video_specs, wait_for
from tests.test_chat_api import dllm_spec

Browser, Locator, Page, expect = playwright.Browser, playwright.Locator, playwright.Page, playwright.expect

pytestmark = pytest.mark.e2e  # starts tritonserver and the frontend

KEY = "playground-key"
CHROMIUM = os.environ.get("PLAYGROUND_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts")) / "playground"
GENERATION_MS = 300_000  # generous for generations on a loaded 2-core machine; every wait ends on its condition


@pytest.fixture(scope="module")
def stack(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    specs = [tiny_image_spec(tiny_models, "diffusers"), *tiny_video_specs(tiny_models, "diffusers")]
    yield from start_stack(
        [*specs, dllm_spec(tiny_models)], tmp_path_factory.mktemp("playground"), frontend_args=("--api-key", KEY)
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # scripts/setup.sh installs Debian's chromium: a missing browser is a broken setup, not a reason to skip.
    assert Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM}: run scripts/setup.sh (it installs Debian's chromium)"
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def open_playground(browser: Browser, stack: Stack) -> Iterator[Page]:
    """A fresh tab (its own session storage) on the page, failing the test on any uncaught script error."""
    context = browser.new_context(viewport={"width": 1200, "height": 820}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{stack.url}/")
    try:
        yield page
    finally:
        context.close()
    assert errors == [], "uncaught script errors"


@pytest.fixture
def fresh_page(browser: Browser, stack: Stack) -> Iterator[Page]:
    yield from open_playground(browser, stack)


@pytest.fixture
def page(fresh_page: Page) -> Page:
    """The page with the API key entered, as a person does once per tab when the page asks for it."""
    expect(fresh_page.locator("#notice")).to_contain_text("API key")
    fresh_page.get_by_label("API key").fill(KEY)
    fresh_page.get_by_role("button", name="Use key").click()
    expect(fresh_page.locator("#image-form select[name=model] option")).to_have_text(["tiny-flux"])
    return fresh_page


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def fill(page: Page, form: str, **fields: str) -> Locator:
    """Type each value into the field of ``form`` labelled with its name, as a person would; the form's locator."""
    located = page.locator(form)
    for label, value in fields.items():
        located.get_by_label(label).fill(value)
    return located


def api(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"authorization": f"Bearer {KEY}"}, timeout=60)


def test_the_page_asks_for_the_key_and_keeps_it_for_the_session_only(fresh_page: Page) -> None:
    page = fresh_page
    assert page.url.endswith("/playground/")  # where / leads
    notice = page.locator("#notice")
    expect(notice).to_contain_text("a valid API key is required")  # the API's own 401 message
    page.get_by_label("API key").fill("wrong-key")
    page.get_by_role("button", name="Use key").click()
    expect(notice).to_contain_text("a valid API key is required")
    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Use key").click()
    expect(notice).to_be_hidden()
    video_models = page.locator("#video-form select[name=model] option")
    expect(video_models).to_have_count(2)
    assert sorted(video_models.all_text_contents()) == ["tiny-wan-i2v", "tiny-wan-t2v"]
    expect(page.locator("#chat-form select[name=model] option")).to_have_text(["tiny-llada"])
    assert page.evaluate("() => [sessionStorage.length, localStorage.length]") == [1, 0]
    page.reload()  # the same tab keeps the key
    expect(page.locator("#image-form select[name=model] option")).to_have_text(["tiny-flux"])
    expect(notice).to_be_hidden()


def test_images_appear_in_a_grid_with_their_seeds_at_the_size_asked_and_download(page: Page) -> None:
    form = fill(page, "#image-form", Prompt="a lighthouse at dusk", Size="128x96", Count="3", Steps="2", Seed="7")
    form.get_by_role("button", name="Generate").click()
    images = page.locator("#image-grid img")
    expect(images).to_have_count(3, timeout=GENERATION_MS)
    page.wait_for_function("() => [...document.querySelectorAll('#image-grid img')].every(i => i.naturalWidth)")
    sizes = images.evaluate_all("(imgs) => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[128, 96]] * 3
    expect(page.locator("#image-grid figcaption")).to_contain_text(["seed 7", "seed 8", "seed 9"])
    screenshot(page, "images")

    with page.expect_download() as download:
        page.locator("#image-grid figure").nth(1).get_by_role("link", name="Download").click()
    assert download.value.suggested_filename == "seed-8.png"
    assert Image.open(download.value.path()).size == (128, 96)


def png_file(name: str, width: int, height: int, transparent: bool = False) -> dict:
    """An upload for ``set_input_files``: noise, or (``transparent``) a mask clear in its middle (repaint there)."""
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    if transparent:
        pixels[height // 4 : -height // 4, width // 4 : -width // 4, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels if transparent else pixels[..., :3]).save(buffer, format="PNG")
    return {"name": name, "mimeType": "image/png", "buffer": buffer.getvalue()}


@pytest.mark.parametrize("masked", [False, True], ids=["whole", "masked"])
def test_an_uploaded_image_is_edited_at_its_own_size(page: Page, masked: bool) -> None:
    form = fill(page, "#image-form", Prompt="make it autumn", Steps="2")
    form.locator("input[name=image]").set_input_files(png_file("photo.png", 80, 48))
    if masked:
        form.locator("input[name=mask]").set_input_files(png_file("mask.png", 80, 48, transparent=True))
    form.get_by_role("button", name="Generate").click()
    image = page.locator("#image-grid img")
    expect(image).to_have_count(1, timeout=GENERATION_MS)
    page.wait_for_function("() => document.querySelector('#image-grid img').naturalWidth > 0")
    assert image.evaluate("(i) => [i.naturalWidth, i.naturalHeight]") == [80, 48]


def test_bad_input_shows_the_api_message(page: Page, stack: Stack) -> None:
    form = page.locator("#image-form")
    form.get_by_label("Size").fill("1023x1023")
    form.get_by_role("button", name="Generate").click()
    with api(stack) as http:
        answer = http.post("/v1/images/generations", json={"prompt": "x", "size": "1023x1023"})
    assert answer.status_code == 400
    error = form.locator(".error")
    expect(error).to_have_text(answer.json()["error"]["message"])
    expect(error).to_contain_text("must be a multiple of 16")
    expect(page.locator("#image-grid img")).to_have_count(0)
    screenshot(page, "bad-input")


def wait_until_the_video_plays(page: Page) -> None:
    """The page's <video> has the MP4 loaded and decoded its first frame."""
    page.wait_for_function(
        "() => { const v = document.querySelector('#video-job video'); return v.readyState >= 2 && v.videoWidth }",
        timeout=GENERATION_MS,
    )


def test_a_video_shows_its_progress_then_plays_with_its_previews_and_can_be_deleted(page: Page, stack: Stack) -> None:
    page.get_by_role("tab", name="Video").click()
    form = fill(page, "#video-form", Prompt="a paper boat on a pond", Size="64x64", Frames="9", FPS="8", Steps="40")
    form.locator("select[name=model]").select_option("tiny-wan-t2v")
    # Record every value the progress bar takes, as the page sets it from the job API.
    page.evaluate(
        """() => {
        const bar = document.querySelector('#video-job progress');
        window.progressSeen = [];
        new MutationObserver(() => window.progressSeen.push(bar.value)).observe(bar, {attributes: true});
        }"""
    )
    form.get_by_role("button", name="Create video").click()
    wait_until_the_video_plays(page)
    seen = page.evaluate("() => window.progressSeen")
    assert any(0 < value < 100 for value in seen), f"the bar advanced through the job: {seen}"
    assert seen == sorted(seen) and seen[-1] == 100
    width, height, duration, error = page.locator("#video-job video").evaluate(
        "(v) => [v.videoWidth, v.videoHeight, v.duration, v.error]"
    )
    assert (width, height, error) == (64, 64, None) and duration == pytest.approx(9 / 8, abs=0.05)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#video-job img')].every(i => i.complete && i.naturalWidth)"
    )
    assert page.locator("#video-job img.thumbnail").evaluate("(i) => i.naturalWidth") == 64
    row = page.locator("#video-jobs tbody tr", has_text="a paper boat on a pond")
    expect(row).to_contain_text("completed")
    screenshot(page, "video")

    video_id = row.get_attribute("data-id")
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    expect(page.locator("#video-job")).to_be_hidden()
    with api(stack) as http:
        assert http.get(f"/v1/videos/{video_id}").status_code == 404


def test_a_video_from_an_uploaded_image(page: Page) -> None:
    page.get_by_role("tab", name="Video").click()
    form = fill(page, "#video-form", Prompt="the picture comes alive", Size="64x64", Frames="5", FPS="8", Steps="2")
    form.locator("select[name=model]").select_option("tiny-wan-i2v")
    form.locator("input[name=input_reference]").set_input_files(png_file("start.png", 64, 64))
    form.get_by_role("button", name="Create video").click()
    wait_until_the_video_plays(page)
    duration = page.locator("#video-job video").evaluate("(v) => v.duration")
    assert duration == pytest.approx(5 / 8, abs=0.05)
    expect(page.locator("#video-jobs tbody tr", has_text="the picture comes alive")).to_contain_text("tiny-wan-i2v")


def cancelled_generations(stack: Stack) -> float:
    with api(stack) as http:
        text = http.get("/metrics").text
    return metric_value(text, "diffusion_requests_total", model="dllm", outcome="GenerationCancelled")


def test_chat_streams_blocks_as_decided_and_stop_cancels_on_the_server(page: Page, stack: Stack) -> None:
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("Settings").click()
    # A long answer (minutes on this model) in blocks of 4 tokens: only stopping ends it soon.
    form = fill(page, "#chat-form", **{"Max tokens": "3000", "Block length": "4", "Steps": "3000"})
    form.get_by_placeholder("Say something").fill("Tell me a long story")
    before = cancelled_generations(stack)
    form.get_by_role("button", name="Send").click()

    answer = page.locator("#chat-log li.assistant").last
    expect(answer.locator(".block")).not_to_have_count(0, timeout=GENERATION_MS)
    expect(answer.locator(".block").nth(1)).to_be_attached(timeout=GENERATION_MS)  # block after block
    assert answer.locator("p").inner_text().strip(), "text arrived"
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_enabled()  # still decoding: the text came before the end
    screenshot(page, "chat")
    stop.click()
    expect(answer.locator("small")).to_have_text("stopped")
    wait_for(lambda: cancelled_generations(stack) > before, timeout=60, message="the server cancelling the generation")
    expect(stop).to_be_disabled()

    # The conversation goes on, and a short answer runs to its end.
    form.get_by_label("Max tokens").fill("8")
    form.get_by_placeholder("Say something").fill("And now briefly?")
    form.get_by_role("button", name="Send").click()
    expect(page.locator("#chat-log li.assistant").last.locator("small")).to_have_text(
        re.compile(r"finished \((length|stop)\)"), timeout=GENERATION_MS
    )
    expect(page.locator("#chat-log li")).to_have_count(4)
