"""The admin console in a real headless Chromium (Debian's chromium + chromium-driver, selenium).

An admin signs in, sees the overview, opens the conversation a (fake) Telegram chat produced,
changes its temperature and sees the next LLM request use it and the audit log show it, then
chats on the Try-it page and watches the reply stream in. Every page is also checked for labelled
form fields and landmarks, and for fitting a phone's width. Screenshots go to the test's tmp_path.
One browser serves the whole module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bot.admin.console import AdminConsole
from bot.config import HTTPSettings
from bot.health import platform_check
from bot.http_server import OpsServer
from tests.conftest import not_installed
from tests.fakes.admin_client import PASSWORD
from tests.fakes.llm_server import Behaviour, FakeLLMServer
from tests.fakes.platform_bots import echo_reply, echoed, telegram_bot, telegram_replies
from tests.fakes.telegram_api import FakeTelegramAPI

pytestmark = pytest.mark.browser

# Flags that work on this kind of machine (no GPU, no sandbox as root, a closed network).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # the console is on loopback: never through a proxy
    "--window-size=1280,1000",
)
WAIT_S = 20.0  # a safety net for each wait, never a speed target
ANN = 4001
STREAMED_REPLY = " ".join(f"word{i}" for i in range(40))

# Form fields without a label, and the page's landmarks, as a screen reader would find them.
_A11Y_SCRIPT = """
const fields = [...document.querySelectorAll('input, select, textarea')]
  .filter((e) => e.type !== 'hidden');
const unlabelled = fields
  .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
  .map((e) => e.name || e.id);
const landmarks = ['header', 'nav', 'main', 'footer'].filter((t) => document.querySelector(t));
// What sticks out past the window (for the failure message).
const wide = [...document.querySelectorAll('body *')]
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
  .map((e) => `${e.tagName}.${e.className}`);
const overflow = document.documentElement.scrollWidth - window.innerWidth;
return {unlabelled, landmarks, wide, overflow};
"""
_RECORD_BOT_TEXT = """
window.seenTexts = [];
const list = document.getElementById('bubbles');
new MutationObserver(() => {
  const bots = list.querySelectorAll('.bubble.bot');
  if (bots.length) window.seenTexts.push(bots[bots.length - 1].textContent);
}).observe(list, {childList: true, subtree: true, characterData: true});
"""


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module, with a fresh profile."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        not_installed(
            "chromium and chromium-driver are not installed (scripts/setup.sh installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@dataclass
class Browser:
    """Selenium calls in a worker thread, so the bot and its fakes keep running meanwhile."""

    driver: WebDriver
    base_url: str
    shots: Path

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, path: str) -> None:
        await self.call(self.driver.get, self.base_url + path)

    async def until(self, condition: Callable[[WebDriver], Any]) -> Any:
        # A page that is being replaced by the next one has stale or missing elements: retry.
        wait = WebDriverWait(
            self.driver,
            WAIT_S,
            poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        try:
            return await self.call(wait.until, condition)
        except TimeoutException:
            # What the browser showed, for whoever reads the failure.
            await self.screenshot("failed-wait")
            (self.shots / "failed-wait.html").write_text(self.driver.page_source)
            raise

    async def text(self, css: str = "main") -> str:
        return str(await self.call(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text))

    async def click_link(self, text: str) -> None:
        await self.call(lambda: self.driver.find_element(By.LINK_TEXT, text).click())

    async def type_into(self, css: str, text: str) -> None:
        def typing() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)

        await self.call(typing)

    async def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.call(self.driver.save_screenshot, str(path))
        return path

    async def check_accessible(self) -> None:
        found = await self.call(self.driver.execute_script, _A11Y_SCRIPT)
        assert found["unlabelled"] == [], found
        assert {"header", "main"} <= set(found["landmarks"]), found
        assert found["overflow"] <= 0, found


@contextlib.asynccontextmanager
async def telegram_bot_with_console(
    tmp_path: Path, api: FakeTelegramAPI, llm: FakeLLMServer
) -> AsyncIterator[tuple[Any, OpsServer]]:
    from tests.fakes.platform_bots import telegram_settings

    settings = telegram_settings(tmp_path, api, llm.url)
    settings.http = HTTPSettings(enabled=True, port=0, admin_password=PASSWORD)
    async with telegram_bot(settings) as running:
        checks = running.app.health_checks()
        checks.add("telegram", platform_check(running.adapter))
        console = AdminConsole.for_app(running.app, environ={}, sample_every_s=0.5)
        server = OpsServer(settings.http, checks, extensions=[console])
        await server.start()
        try:
            yield running, server
        finally:
            await server.stop()


async def test_an_admin_runs_the_bot_from_the_browser(
    chromium: WebDriver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # as `parley run` logs: the log tail shows INFO lines
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with (
        FakeTelegramAPI() as api,
        FakeLLMServer(Behaviour(reply=echo_reply)) as llm,
        telegram_bot_with_console(tmp_path, api, llm) as (_, server),
    ):
        ann = api.user(ANN, "Ann")
        chat = api.private_chat(ann)
        api.send_text(chat, ann, "hello bot")
        await api.wait_for(lambda a: telegram_replies(a, ANN) == [echoed("hello bot")])
        page = Browser(chromium, server.url, shots)

        # Signing in, with the keyboard.
        await page.open("/admin")
        await page.until(lambda d: "/admin/login" in d.current_url)
        await page.check_accessible()
        await page.screenshot("login")
        await page.type_into("#password", PASSWORD + Keys.ENTER)
        await page.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Overview")

        # The overview: Telegram connected, the LLM backend, charts drawn from the metrics.
        await page.until(lambda d: "telegram\nconnected" in d.find_element(By.ID, "health").text)
        await page.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, 'figure[data-series="replies"] polyline')
        )
        assert llm.url in await page.text("#backends")
        await page.check_accessible()
        await page.screenshot("overview")

        # The conversation the Telegram chat produced.
        await page.click_link("Conversations")
        await page.click_link(f"telegram {ANN}")
        text = await page.text()
        assert "hello bot" in text and echoed("hello bot") in text and "complete" in text
        await page.check_accessible()
        await page.screenshot("conversation")

        # Its temperature, changed here, is used by the next LLM request.
        await page.click_link("Settings of this chat")
        await page.type_into("#value-temperature", "1.3")
        await page.call(
            lambda: chromium.find_element(By.XPATH, "//button[text()='Save temperature']").click()
        )
        await page.until(lambda d: "temperature is now 1.3" in d.find_element(By.ID, "saved").text)
        await page.check_accessible()
        await page.screenshot("chat-settings")
        api.send_text(chat, ann, "second question")
        await api.wait_for(lambda a: echoed("second question") in telegram_replies(a, ANN))
        assert llm.requests[-1]["temperature"] == 1.3

        # The audit log shows the change.
        await page.click_link("Audit log")
        rows = await page.call(
            lambda: [r.text for r in chromium.find_elements(By.CSS_SELECTOR, "tbody tr")]
        )
        assert any("config.set" in r and "temperature" in r and "0.7 1.3" in r for r in rows), rows
        await page.check_accessible()
        await page.screenshot("audit")

        # Global settings (read-only, with sources) and the live log tail.
        await page.click_link("Settings")
        assert "llm.base_url" in await page.text() and "telegram.token" in await page.text()
        assert api.token not in await page.text()
        await page.check_accessible()
        await page.screenshot("settings")
        await page.click_link("Logs")
        await page.until(lambda d: "signed in from" in d.find_element(By.ID, "log").text)
        await page.check_accessible()
        await page.screenshot("logs")

        # Try it: the reply streams into the page.
        llm.behaviour = Behaviour(reply=STREAMED_REPLY, delay_s=0.03)
        await page.click_link("Try it")
        await page.call(chromium.execute_script, _RECORD_BOT_TEXT)
        await page.type_into("#message", "tell me forty words" + Keys.ENTER)
        await page.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".bubble.bot[data-final]"))
        seen: list[str] = await page.call(chromium.execute_script, "return window.seenTexts")
        final = await page.text(".bubble.bot[data-final]")
        assert final == STREAMED_REPLY
        growing = [t.removesuffix(" ▌") for t in dict.fromkeys(seen)]
        assert len(growing) >= 3, seen  # shown in several steps, not all at once
        assert all(STREAMED_REPLY.startswith(t) for t in growing), seen
        assert llm.requests[-1]["messages"][-1]["content"] == "tell me forty words"
        await page.check_accessible()
        await page.screenshot("try-it")

        # Readable on a phone: nothing wider than the screen.
        await page.call(chromium.set_window_size, 390, 844)
        try:
            for path, name in (("/admin", "overview-phone"), ("/admin/chats", "chats-phone")):
                await page.open(path)
                await page.screenshot(name)
                await page.check_accessible()
        finally:
            await page.call(chromium.set_window_size, 1280, 1000)
    assert sorted(p.name for p in shots.iterdir()) == sorted(
        f"{n}.png"
        for n in ("login", "overview", "conversation", "chat-settings", "audit", "settings",
                  "logs", "try-it", "overview-phone", "chats-phone")
    )  # fmt: skip
