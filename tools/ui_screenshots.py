"""Screenshots of the Dagster UI as an ML-ops user sees it, in a real (headless) browser.

Starts `dagster dev` on 127.0.0.1 against an ELIQ_HOME that holds a materialized era (its Dagster
instance in <home>/dagster, as `make demo` leaves it), opens the UI in Debian's headless Chromium
through Selenium, and saves:

  lineage.png            the global asset lineage (Lineage in the side bar)
  benchmark_scores.png   benchmark_scores' latest materialization of the era: its metadata, with
                         the numbers, the scores table and the plots' entries
  qqt_model.png          qqt_model's latest materialization: accuracies, losses, plots' entries
  <asset>__<key>.png     each image entry (plot or preview grid) of those two and of tuned_mllm,
                         positive_images and negative_images, opened in its dialog as a user would
  <asset>__checks.png    the Checks tab of benchmark_scores and qqt_model: each check's latest
                         evaluation with its partition

Run from the repository root, after `make demo` (or any `eliq materialize` into that home):

    apt-get install -y chromium chromium-driver      # once; Selenium drives this browser
    .venv/bin/pip install -e ".[ui]"                 # once; the `ui` extra is Selenium
    .venv/bin/python tools/ui_screenshots.py --home .eliq --out /tmp/ui-shots

`--era` picks the partition shown (default: the newest materialized one), `--port` the UI's port
(default 3300, so a running `make ui` on 3000 is left alone), `--keep-open` leaves the UI running
after the screenshots. The UI runs in the instance folder, as `make ui` does, with the same
daemon: while it is up the era sensor would start runs for eras of the registry file that the
home has not registered yet (none after `make demo`). A developer tool, not part of the pipeline or
its tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSET_PAGES = ("benchmark_scores", "qqt_model")  # saved as <asset>.png
IMAGE_ENTRIES_OF = ("benchmark_scores", "qqt_model", "tuned_mllm", "positive_images", "negative_images")
CHECK_PAGES = ("benchmark_scores", "qqt_model")  # saved as <asset>__checks.png


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("ELIQ_HOME", ".eliq"),
                        help="ELIQ_HOME with a materialized era (default $ELIQ_HOME or ./.eliq)")
    parser.add_argument("--eras", default=os.environ.get("ELIQ_ERAS", str(ROOT / "eras.yaml")),
                        help="era registry the home was built from (default $ELIQ_ERAS or eras.yaml)")
    parser.add_argument("--out", default="/tmp/ui-shots", help="folder for the PNGs (default /tmp/ui-shots)")
    parser.add_argument("--era", default="", help="partition to show (default: the newest materialized era)")
    parser.add_argument("--port", type=int, default=3300)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the UI to come up")
    parser.add_argument("--keep-open", action="store_true", help="leave the UI running after the screenshots")
    return parser.parse_args(argv)


def start_dagster(home: Path, eras: Path, port: int) -> subprocess.Popen:
    """`dagster dev` in the instance folder (as `make ui`), in its own process group."""
    dagster_home = home / "dagster"
    if not (dagster_home / "dagster.yaml").is_file():
        raise SystemExit(f"{dagster_home}/dagster.yaml not found: materialize an era into {home} first (make demo)")
    env = {**os.environ, "ELIQ_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "ELIQ_ERAS": str(eras),
           "PYTHONWARNINGS": "ignore:Function `dev_command` is superseded"}  # as `make ui`
    dagster = Path(sys.executable).with_name("dagster")
    log = open(home / "dagster" / "ui_screenshots.log", "w")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(ROOT / "workspace.yaml")],
                            cwd=dagster_home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dagster dev exited with {process.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def newest_era(home: Path) -> str:
    """The newest partition with a benchmark_scores materialization in the home's instance."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with dg.DagsterInstance.get() as instance:
        records = instance.fetch_materializations(dg.AssetKey("benchmark_scores"), limit=1).records
        if not records:
            raise SystemExit(f"no era of {home} has benchmark_scores materialized yet")
        return records[0].partition_key


def browser(args: argparse.Namespace):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--hide-scrollbars", f"--window-size={args.width},{args.height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=options)


def settle(driver, seconds: float = 3.0, timeout: float = 60) -> None:
    """Wait until the page has no loading spinner for `seconds` in a row."""
    from selenium.webdriver.common.by import By

    deadline, quiet_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        busy = driver.find_elements(By.CSS_SELECTOR, "[class*='Spinner'], [role='progressbar']")
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            return
        time.sleep(0.5)


def click_text(driver, text: str) -> bool:
    """Click the first visible button / link / tab whose text is `text`; False when there is none."""
    from selenium.webdriver.common.by import By

    for element in driver.find_elements(By.XPATH, f"//*[self::button or self::a or @role='tab'][normalize-space()='{text}']"):
        if element.is_displayed():
            element.click()
            return True
    return False


def dismiss_popups(driver) -> None:
    """Skip the first-visit "Join the Dagster community" dialog."""
    if click_text(driver, "Skip"):
        time.sleep(1)


def image_entries(driver, asset: str, out: Path) -> list[Path]:
    """Open each Markdown entry of the shown materialization that holds an image, screenshot its
    dialog, close it."""
    from selenium.webdriver.common.by import By

    saved = []
    for row in driver.find_elements(By.XPATH, "//tr[td[2][normalize-space()='[Show Markdown]']]"):
        key = row.find_element(By.XPATH, "td[1]").text.strip()
        link = row.find_element(By.XPATH, "td[2]//a")
        driver.execute_script("arguments[0].click()", link)  # a plain click lands on its wrapper
        time.sleep(1.5)
        dialog = driver.find_elements(By.CSS_SELECTOR, "[role='dialog']")
        if dialog and dialog[-1].find_elements(By.TAG_NAME, "img"):
            saved.append(out / f"{asset}__{key}.png")
            driver.save_screenshot(str(saved[-1]))
        click_text(driver, "Close")
        time.sleep(0.5)
    return saved


def full_height(driver, minimum: int) -> None:
    """Grow the window to the height of the page's tallest scrolling panel, so one screenshot
    shows the whole materialization (the UI scrolls inside panels, not the page)."""
    height = driver.execute_script(
        "return Math.max(...Array.from(document.querySelectorAll('*'))"
        ".filter(e => e.scrollHeight > e.clientHeight + 4 && getComputedStyle(e).overflowY != 'visible')"
        ".map(e => e.scrollHeight - e.clientHeight), 0)")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(max(minimum, minimum + int(height)), 12000))


def screenshots(args: argparse.Namespace, base: str, era: str, out: Path) -> list[Path]:
    driver = browser(args)
    saved = []
    try:
        driver.get(f"{base}/asset-groups")
        settle(driver)
        dismiss_popups(driver)
        settle(driver, 1.5)
        saved.append(out / "lineage.png")
        driver.save_screenshot(str(saved[-1]))
        for asset in dict.fromkeys(ASSET_PAGES + IMAGE_ENTRIES_OF):
            driver.set_window_size(args.width, args.height)
            driver.get(f"{base}/assets/{asset}?partition={era}&view=events")
            settle(driver)
            dismiss_popups(driver)
            if asset in ASSET_PAGES:
                full_height(driver, args.height)
                settle(driver, 1.5)
                saved.append(out / f"{asset}.png")
                driver.save_screenshot(str(saved[-1]))
            if asset in IMAGE_ENTRIES_OF:
                driver.set_window_size(args.width, args.height)
                saved += image_entries(driver, asset, out)
        for asset in CHECK_PAGES:  # the Checks tab: each check's latest evaluation and its partition
            driver.set_window_size(args.width, args.height)
            driver.get(f"{base}/assets/{asset}?view=checks")
            settle(driver)
            saved.append(out / f"{asset}__checks.png")
            driver.save_screenshot(str(saved[-1]))
    finally:
        driver.quit()
    return saved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    home, eras, out = Path(args.home).resolve(), Path(args.eras).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    era = args.era or newest_era(home)
    process = start_dagster(home, eras, args.port)
    base = f"http://127.0.0.1:{args.port}"
    try:
        wait_for(f"{base}/server_info", args.timeout, process)
        for path in screenshots(args, base, era, out):
            print(path)
        if args.keep_open:
            print(f"the UI stays on {base} (dagster dev pid {process.pid}); Ctrl-C ends it")
            process.wait()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # dagster dev shuts its webserver, daemon and code server down
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # it does not always finish shutting down: end its group
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
