#!/usr/bin/env python
"""A screenshot of the web page's Generate tab on a trained model (the picture in README and docs/app.md).

    python scripts/app_screenshot.py --run OUTPUT/demo_shapes --caption "a red circle at the top left" \
        --out docs/app_generate.png

Starts ``python -m vqdiff.app`` on 127.0.0.1 with the demo run's config and checkpoint (paths shown
relative to the run folder, the server's working folder), opens the page in Debian's headless Chromium
(``bash scripts/install_browser.sh``; Selenium is given the driver's path, so nothing is downloaded),
types the caption, clicks Generate, waits for the images and saves the screenshot. The server is
stopped at the end, also on an error.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

# Debian's browser and driver (scripts/install_browser.sh); tests/test_app_browser.py drives the same one
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before it served")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the app did not listen on port {port} within {timeout_s:.0f} s")


def screenshot(url: str, caption: str, out: Path, images: int, timeout_s: float) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout_s)
        box = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#generate-prompt textarea")))
        box.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
        box.send_keys(caption)
        driver.find_element(By.CSS_SELECTOR, "#generate-button").click()
        shown = ("return Array.from(document.querySelectorAll('#gallery img'))"
                 ".filter(i => i.complete && i.naturalWidth > 0).length;")
        wait.until(lambda d: d.execute_script(shown) >= images, message=f"timed out waiting for {images} images")
        time.sleep(1.0)  # let the gallery finish its layout
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run_demo_shapes.py output folder")
    parser.add_argument("--caption", default="a red circle at the top left on a gray background")
    parser.add_argument("--out", default="docs/app_generate.png")
    parser.add_argument("--images", type=int, default=4, help="images the page shows per request (its default)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server and images")
    args = parser.parse_args(argv)
    run = Path(args.run).resolve()
    config, ckpt = Path("configs/demo_text_shapes.yaml"), Path("diffusion/checkpoint/last.pth")
    for path in (config, ckpt):
        if not (run / path).is_file():
            parser.error(f"'{run / path}' is missing: --run must be a finished demo run")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            parser.error(f"'{path}' is missing: run 'bash scripts/install_browser.sh' first")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "vqdiff.app", "--config", str(config), "--ckpt", str(ckpt),
                               "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"], cwd=run)
    out = Path(args.out).resolve()
    try:
        wait_for_port(port, server, args.timeout)
        screenshot(f"http://127.0.0.1:{port}", args.caption, out, args.images, args.timeout)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"saved {out}")
    return out


if __name__ == "__main__":
    main()
