"""The dashboard in a real browser: Debian's chromium driven by Selenium through
chromium-driver (``make test-deps`` installs both with apt-get; no browser is ever
downloaded by a tool). Headless. The final screenshot goes to the test's temporary
directory, or with ``QUEUECTL_UPDATE_SCREENSHOT=1`` to docs/dashboard.png (the README's
picture).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.harness import QueueDaemon
from tests.http.gateway import Gateway

# The dashboard in a browser tests the gateway and the page, not the store, and is
# slow: on SQLite only, to keep the suite in its time budget.
pytestmark = [
    pytest.mark.sqlite_only(reason="not about the store; suite time budget"),
    pytest.mark.timeout(180),
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
WAIT_S = 20


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"{path} is missing: install Debian's {package} package "
                "(`make test-deps` does, as root), then rerun"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,760"):
        options.add_argument(arg)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: WebDriver, css: str) -> str:
    # The page redraws its lists on every event: an element found may be gone when read.
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""


def click(driver: WebDriver, css: str) -> None:
    """Click what ``css`` finds, again if a redraw replaced it in between."""

    def clicked(d: WebDriver) -> bool:
        try:
            d.find_element(By.CSS_SELECTOR, css).click()
        except StaleElementReferenceException:
            return False
        return True

    WebDriverWait(driver, WAIT_S).until(clicked, f"could not click {css}")


def wait_text(driver: WebDriver, css: str, expected: str) -> None:
    WebDriverWait(driver, WAIT_S).until(
        lambda d: expected in text_of(d, css), f"{css} never showed {expected!r}"
    )


def count(driver: WebDriver, state: str) -> str:
    return text_of(driver, f"#count-{state} b")


def wait_count(driver: WebDriver, state: str, value: int) -> None:
    WebDriverWait(driver, WAIT_S).until(
        lambda d: count(d, state) == str(value),
        f"the {state} count never became {value}",
    )


def set_workers(driver: WebDriver, value: int) -> None:
    box = driver.find_element(By.ID, "workers-input")
    box.clear()
    box.send_keys(str(value))
    driver.find_element(By.ID, "workers-set").click()
    wait_text(driver, "#message", f"workers: {value} desired")


def test_dashboard_follows_and_steers_the_queue(
    daemon: QueueDaemon, gateway: Gateway, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(gateway.url + "/")
    wait_text(browser, "#live", "live")
    wait_count(browser, "pending", 0)

    # Enqueued through the CLI: the row and the count appear without a reload.
    daemon.cli("enqueue", "--id", "hello", "--", "echo hello from the CLI")
    evil = "echo '<img src=x onerror=alert(1)>'"
    daemon.cli("enqueue", "--id", "evil", "--", evil)
    wait_count(browser, "pending", 2)
    wait_text(browser, "tr[data-id='hello']", "echo hello from the CLI")
    # Job text is escaped: shown as text, never made into elements.
    assert text_of(browser, "tr[data-id='evil'] td.cmd") == evil
    assert not browser.find_elements(By.CSS_SELECTOR, "#job-list img")

    # Set the worker count from the page; the jobs run.
    set_workers(browser, 2)
    wait_count(browser, "completed", 2)
    assert daemon.status()["workers"]["desired"] == 2

    # A job that dies; stop the workers so that its retry stays visible as pending.
    daemon.cli("enqueue", "--id", "doomed", "--max-retries", "0", "--", "echo doomed; exit 3")
    wait_count(browser, "dead", 1)
    set_workers(browser, 0)
    click(browser, "tr[data-id='doomed']")
    wait_text(browser, "#job-state", "dead")
    wait_text(browser, "#job-log", "doomed")
    wait_text(browser, "#attempts", "failed")
    click(browser, "#retry")
    wait_text(browser, "#message", "job doomed will run again")
    wait_count(browser, "dead", 0)
    wait_count(browser, "pending", 1)
    wait_text(browser, "#job-state", "pending")

    # Back to the list for the README's picture.
    daemon.cli("enqueue", "--id", "nightly-backup", "--", "tar czf /tmp/backup.tgz /etc")
    browser.get(gateway.url + "/#")
    wait_count(browser, "pending", 2)
    wait_text(browser, "tr[data-id='nightly-backup']", "tar czf")
    shot = SCREENSHOT if os.environ.get("QUEUECTL_UPDATE_SCREENSHOT") else tmp_path / "d.png"
    assert browser.save_screenshot(str(shot))
