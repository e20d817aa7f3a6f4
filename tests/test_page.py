"""The page in a real browser: headless Chromium (Debian's package), driven by Playwright,
uploads or drops a picture and sees each face boxed with its age, and starts the camera,
Chromium's fake device playing a video made here from a face of the archive, and sees an
age steadied over frames; a refused or missing camera is said, and photos still work.

Skipped, with the reason, where Chromium or Playwright is missing; .ci/run installs both
and sets REQUIRE_BROWSER=1, under which a missing one fails instead."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import serve
from test_serve import encoded, face_picture, faces, model_path  # noqa: F401 (fixtures)

# Debian's Chromium, started as tools/make_screenshots.py starts it: without the
# background-networking flags its connections to Google's hosts fail, many at a time, on
# a machine without the internet.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What the page is given to answer a picture: the untrained model is quick, the machine
# may be busy.
ANSWER_MS = 120_000


def write_y4m(path, picture, frames=8, step=2):
    """A Y4M video (what Chromium's fake camera plays) of an RGB picture, its frames
    moved `step` pixels to the right one after another, in 4:2:0 YCbCr."""
    height, width = picture.shape[:2]
    with open(path, "wb") as file:
        file.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for number in range(frames):
            moved = np.roll(picture, step * number, axis=1)
            planes = Image.fromarray(moved).convert("YCbCr").split()
            half = (width // 2, height // 2)
            chroma = [plane.resize(half, Image.BILINEAR) for plane in planes[1:]]
            file.write(b"FRAME\n")
            for plane in (planes[0], *chroma):
                file.write(np.asarray(plane).tobytes())
    return Path(path)


def _missing_browser():
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return "no chromium (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Playwright for Python (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def playwright():
    """Playwright, or a skip (a failure under REQUIRE_BROWSER=1) that says what is missing."""
    reason = _missing_browser()
    if reason:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def server(model_path):  # noqa: F811 (model_path is the fixture imported above)
    """The page's server of the small untrained model, in a thread."""
    server, _ = serve.start(model_path, port=0)
    yield server
    server.stop()


def open_browser(playwright, profile, *flags):
    """A new Chromium with an empty profile folder, and its first page, whose console
    errors (a script refused by the page's policy, say) are kept in page.problems."""
    browser = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=[*FLAGS, *flags],
        viewport={"width": 1000, "height": 900},
    )
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on(
        "console",
        lambda message: message.type == "error" and page.problems.append(message.text),
    )
    return browser, page


def _inside(inner, outer, slack=2):
    """True when one bounding box {x, y, width, height} lies inside another."""
    return (
        inner["x"] >= outer["x"] - slack
        and inner["y"] >= outer["y"] - slack
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack
    )


def test_an_uploaded_photo_shows_each_face_boxed_with_its_age(
    playwright, server, faces, tmp_path  # noqa: F811
):
    _, images = faces
    picture = face_picture(images[0], 1.3, 420, 120, seed=11)
    browser, page = open_browser(playwright, tmp_path / "profile")
    try:
        page.goto(server.url)
        page.set_input_files(
            "#file",
            files=[
                {"name": "me.jpg", "mimeType": "image/jpeg", "buffer": encoded(picture)}
            ],
        )
        label = page.locator(".face-age").first
        label.wait_for(timeout=ANSWER_MS)
        assert re.fullmatch(r"about \d+", label.inner_text()), label.inner_text()
        assert page.locator(".face-box").count() == 1
        box = page.locator(".face-box").first.bounding_box()
        photo = page.locator("#photo").bounding_box()
        assert _inside(box, photo) and box["width"] > 0.1 * photo["width"]
        # Pasted at x 420-680 of 800 pixels: the box is on the right of the picture.
        assert box["x"] > photo["x"] + 0.45 * photo["width"]
        item = page.locator("#faces li").first.inner_text()
        assert re.search(r"about \d+, usually within ±\d+ years at this age", item)
        assert "1 face found" in page.locator("#status").inner_text()
        assert page.problems == []
    finally:
        browser.close()


def test_a_dropped_picture_of_another_kind_is_read_by_the_browser(
    playwright, server, faces, tmp_path  # noqa: F811
):
    _, images = faces
    two = face_picture(images[1], 1.0, 40, 200, seed=12)
    two[150:390, 480:720] = np.asarray(Image.fromarray(images[2]).resize((240, 240)))
    webp = encoded(two, "WEBP", lossless=True)
    browser, page = open_browser(playwright, tmp_path / "profile")
    try:
        page.goto(server.url)
        transfer = page.evaluate_handle(
            """(bytes) => {
                const transfer = new DataTransfer();
                const file = new File([new Uint8Array(bytes)], "two.webp", {type: "image/webp"});
                transfer.items.add(file);
                return transfer;
            }""",
            list(webp),
        )
        page.dispatch_event("#stage", "drop", {"dataTransfer": transfer})
        page.locator(".face-age").first.wait_for(timeout=ANSWER_MS)
        labels = page.locator(".face-age").all_inner_texts()
        assert len(labels) >= 1 and all(re.search(r"about \d+", t) for t in labels)
        assert page.problems == []
    finally:
        browser.close()


def test_the_camera_shows_an_age_steadied_over_frames(
    playwright, server, faces, tmp_path  # noqa: F811
):
    _, images = faces
    scene = face_picture(images[0], 1.1, 200, 110, size=(480, 640), seed=13)
    video = write_y4m(tmp_path / "face.y4m", scene)
    browser, page = open_browser(
        playwright,
        tmp_path / "profile",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    )
    try:
        page.goto(server.url)
        page.click("#camera")
        page.locator(".face-age").first.wait_for(timeout=ANSWER_MS)
        assert re.fullmatch(r"about \d+", page.locator(".face-age").first.inner_text())
        # The same face in the next frames: its age is the mean of the last ones.
        steadied = re.compile(r"the mean of the last [3-5] frames")
        page.locator("#faces li", has_text=steadied).wait_for(timeout=ANSWER_MS)
        assert "camera is on" in page.locator("#status").inner_text()
        assert page.locator("#camera").inner_text() == "Stop the camera"
        page.click("#camera")
        assert "camera is off" in page.locator("#status").inner_text()
        assert page.problems == []
    finally:
        browser.close()


def test_a_refused_or_missing_camera_is_said_and_photos_still_work(
    playwright, server, faces, tmp_path  # noqa: F811
):
    _, images = faces
    # No fake interface: headless Chromium refuses the page's request for the camera.
    browser, page = open_browser(playwright, tmp_path / "profile")
    try:
        page.goto(server.url)
        page.click("#camera")
        status = page.locator("#status")
        page.locator("#status", has_text="Photos still work").wait_for(timeout=30_000)
        assert re.search(r"camera", status.inner_text(), re.I)
        page.set_input_files(
            "#file",
            files=[
                {
                    "name": "me.png",
                    "mimeType": "image/png",
                    "buffer": encoded(images[3], "PNG"),
                }
            ],
        )
        page.locator(".face-age").first.wait_for(timeout=ANSWER_MS)
        # A browser that offers no camera at all to the page.
        page.add_init_script(
            "Object.defineProperty(navigator, 'mediaDevices', {value: undefined})"
        )
        page.reload()
        page.click("#camera")
        assert "offers no camera" in status.inner_text()
    finally:
        browser.close()
