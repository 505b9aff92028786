"""The README's picture of the demo page: the real page, in Debian's chromium, on the shipped model.

    python scripts/screenshot_demo.py                 # writes docs/images/demo_page.png

The input is the drawn street of tests/service/browser.py (no dataset pixels); the
server is the real one on weights/pspnet_camvid.onnx. The screenshot is reduced to
128 colours so that the README stays light (it must stay under 200 KB).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable from a checkout

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.service.browser import CAMVID, CHROMIUM, live_server, street_png  # noqa: E402

OUT = ROOT / "docs" / "images" / "demo_page.png"
LIMIT = 200 * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--width", type=int, default=1000, help="viewport width in CSS pixels")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, live_server(CAMVID) as base, sync_playwright() as p:
        image = Path(tmp) / "street.png"
        image.write_bytes(street_png())
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": args.width, "height": 800})
        page.goto(base + "/")
        expect(page.locator("#model-line")).to_contain_text("classes")
        page.set_input_files("#file", str(image))
        expect(page.locator("#result")).to_be_visible(timeout=60_000)
        shot = page.screenshot(full_page=True)
        browser.close()
    small = Image.open(io.BytesIO(shot)).convert("RGB").quantize(128, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    small.save(args.out, optimize=True)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({small.width}x{small.height}, {size // 1024} KB)")
    return 0 if size < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
