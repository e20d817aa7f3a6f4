"""The README's screenshots of the page (`python train_loop.py serve`): figures/page.png, a
photo uploaded, and figures/page_camera.png, the camera, Chromium's fake device playing
the same picture.

    pip install playwright scikit-image    # and Debian's chromium: apt-get install chromium
    python tools/make_screenshots.py --model runs/preset_seed0/model.keras

The picture is scikit-image's `astronaut` (skimage.data.astronaut(), shipped inside the
package): NASA's portrait of the astronaut Eileen Collins, a work of the US government in
the public domain. No UTKFace face ever goes into a committed file. Chromium is started as
the browser tests start it (tests/test_page.py).
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPOSITORY), str(REPOSITORY / "tests")]

import serve  # noqa: E402
from test_page import CHROMIUM, FLAGS, write_y4m  # noqa: E402

WIDTH = 900  # pixels of the browser's window


def astronaut():
    """NASA's portrait of Eileen Collins (public domain), as scikit-image ships it."""
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8


def camera_scene(picture, size=(480, 640)):
    """The picture in a camera's 4:3 frame, on a grey wall."""
    height, width = size
    scene = np.full((height, width, 3), 118, np.uint8)
    side = min(height, width)
    resized = np.asarray(Image.fromarray(picture).resize((side, side), Image.LANCZOS))
    left = (width - side) // 2
    scene[:, left : left + side] = resized
    return scene


def shoot(page, path):
    """A screenshot of the whole page, saved small (a palette of 256 colours)."""
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as shot:
        shot.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
            path, optimize=True
        )
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model.keras file")
    parser.add_argument("--out", default=REPOSITORY / "figures", type=Path)
    parser.add_argument("--port", default=8000, type=int, help="as `serve` (0: any)")
    arguments = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    server, url = serve.start(arguments.model, port=arguments.port)
    picture = astronaut()
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as driver:
        folder = Path(folder)
        Image.fromarray(picture).save(folder / "astronaut.png")
        video = write_y4m(folder / "astronaut.y4m", camera_scene(picture), step=0)
        browser = driver.chromium.launch_persistent_context(
            str(folder / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                *FLAGS,
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={video}",
            ],
            viewport={"width": WIDTH, "height": 700},
        )
        page = browser.pages[0]
        page.goto(url)
        page.set_input_files("#file", str(folder / "astronaut.png"))
        page.locator("#faces li").first.wait_for(timeout=120_000)
        shoot(page, arguments.out / "page.png")
        page.click("#camera")
        page.locator("#faces li", has_text="the mean of the last 5 frames").wait_for(
            timeout=120_000
        )
        shoot(page, arguments.out / "page_camera.png")
        browser.close()
    server.stop()


if __name__ == "__main__":
    main()
