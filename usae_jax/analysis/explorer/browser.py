"""Drive the explorer in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, via
Selenium): screenshots for docs and the browser test's helpers. Nothing is downloaded: the
browser and driver paths come from ``$USAE_CHROMIUM`` / ``$USAE_CHROMEDRIVER`` (default
``/usr/bin/chromium``, ``/usr/bin/chromedriver``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--allow-file-access-from-files",
)


def chromium_paths() -> tuple[str, str]:
    """``(browser, driver)`` executables; raises FileNotFoundError naming the packages."""
    browser = os.environ.get("USAE_CHROMIUM", "/usr/bin/chromium")
    driver = os.environ.get("USAE_CHROMEDRIVER", "/usr/bin/chromedriver")
    for path in (browser, driver):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: install Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver) or set $USAE_CHROMIUM / "
                "$USAE_CHROMEDRIVER"
            )
    return browser, driver


def open_chromium(width: int = 1400, height: int = 1000, user_data_dir: str | None = None):
    """A Selenium WebDriver on headless Chromium with a fresh profile and browser-console
    logging; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    profile = user_data_dir or tempfile.mkdtemp(prefix="usae_chromium_")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait_for(driver, script: str, timeout: float = 30.0):
    """Poll ``return <script>`` until it is truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for: {script}")


def console_errors(driver) -> list[dict]:
    """Browser-console entries of level SEVERE since the last call."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    """``src`` of every ``<img>`` on the page that has not loaded (``naturalWidth == 0``)."""
    return driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )


def wait_images(driver, timeout: float = 30.0) -> None:
    """Wait until every ``<img>`` on the page has finished loading (or failed)."""
    wait_for(driver, "Array.from(document.images).every(i => i.complete)", timeout)


def page_url(site_dir: str | os.PathLike, page: str = "index.html", fragment: str = "") -> str:
    """``file://`` URL of a page of the site."""
    url = (Path(site_dir).resolve() / page).as_uri()
    return url + (f"#{fragment}" if fragment else "")


def screenshot_site(
    site_dir: str | os.PathLike, out_dir: str | os.PathLike, concept: int | None = None
) -> dict[str, str]:
    """Screenshots of the index and of one concept page (default: the most energetic one).

    Returns ``{"index": path, "concept": path}`` (PNG files in ``out_dir``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    script = (Path(site_dir) / "data" / "index.js").read_text()
    index = json.loads(script[script.index("{") : script.rindex("}") + 1])
    if concept is None:
        energy = [e if e is not None else -1.0 for e in index["concepts"]["energy"]]
        concept = max(range(len(energy)), key=energy.__getitem__)
    driver = open_chromium(height=1100)
    try:
        driver.get(page_url(site_dir))
        wait_for(driver, "document.body.getAttribute('data-ready')")
        paths = {"index": os.fspath(out / "explorer_index.png")}
        driver.save_screenshot(paths["index"])
        driver.get(page_url(site_dir, "concept.html", f"c={concept}"))
        wait_for(driver, f"document.body.getAttribute('data-ready') === '{concept}'")
        wait_images(driver)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd(  # the whole page (up to 2400 px), not just the first screen
            "Emulation.setDeviceMetricsOverride",
            {
                "width": 1400,
                "height": min(int(height), 2400),
                "deviceScaleFactor": 1,
                "mobile": False,
            },
        )
        paths["concept"] = os.fspath(out / "explorer_concept.png")
        driver.save_screenshot(paths["concept"])
        return paths
    finally:
        driver.quit()
