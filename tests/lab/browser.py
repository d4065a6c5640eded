"""A real browser for dashboard tests: Debian's chromium, headless, driven by Selenium through Debian's
chromium-driver (no browser download: both come from the Makefile's APT_PACKAGES)."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
# A phone-sized window: the dashboard must work there (its layout collapses to one column).
PHONE = (412, 915)


@contextmanager
def chromium(size: tuple[int, int] = PHONE):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        raise RuntimeError("chromium and chromium-driver are not installed (make deps installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={size[0]},{size[1]}", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
