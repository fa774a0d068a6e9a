"""Take the screenshot of the demo page for the documentation (``docs/images/demo.png``).

    accelerate launch --num_processes 1 --cpu examples/finetune.py --output_dir ctxadapter-quad \
        --report_to none
    python docs/demo_screenshot.py ctxadapter-quad

Serves ``examples/demo.py ADAPTER`` on 127.0.0.1, opens it in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by Selenium; nothing is downloaded and no host but
127.0.0.1 resolves), ticks two concepts, generates, picks the first example image, edits it,
and saves a screenshot of the whole page with a 256-colour palette.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def chromium(width: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},2400",  # taller than the page; cut below the edits afterwards
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-extensions",
        "--no-first-run",
        f"--user-data-dir={tempfile.mkdtemp(prefix='ctxadapter-chromium-')}",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(
        options=options, service=Service(executable_path=shutil.which("chromedriver"))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", help="Adapter folder (a quad adapter, for the examples).")
    parser.add_argument("--ticks", nargs="*", default=["quad1", "size"])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "demo.png"))
    args = parser.parse_args(argv)

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    spec = importlib.util.spec_from_file_location("ctxadapter_demo", ROOT / "examples/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    app = demo.main([args.adapter], block=False)
    driver = chromium(args.width)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(app.local_url)
        for name in args.ticks:
            selector = f"#concepts input[name='{name}']"
            wait.until(lambda d, s=selector: d.find_element(By.CSS_SELECTOR, s)).click()
        context = driver.find_element(By.CSS_SELECTOR, "#context textarea")
        wait.until(lambda d: set(context.get_attribute("value").split("+")) == set(args.ticks))
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#samples img[src]"))
        driver.find_element(By.CSS_SELECTOR, ".gallery-item, button.gallery-item").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img[src]"))
        driver.find_element(By.ID, "edit").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#edits img[src]"))
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)  # let the last images paint
        bottom = driver.execute_script(
            "return Math.max(...['edit', 'edits'].map("
            "id => document.getElementById(id).getBoundingClientRect().bottom))"
        )
        driver.save_screenshot(args.output)
    finally:
        driver.quit()
        app.close()
    with Image.open(args.output) as image:
        page = image.convert("RGB")
    # the window is taller than the page: keep it down to the edit controls and gallery
    page = page.crop((0, 0, page.width, min(page.height, round(bottom) + 16)))
    page.quantize(256).save(args.output, optimize=True)
    print(args.output)


if __name__ == "__main__":
    main()
