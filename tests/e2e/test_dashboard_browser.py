"""The dashboard in headless Chromium (Debian's, driven by Playwright) against the whole local stack:
create a campaign, send it, watch it complete, pause and resume, retry failed. Screenshots are saved
under artifacts/screenshots/."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from deploy.local.stack import REPO, LocalStack, StackOptions
from shared.sms import segments
from tests.support import Api, eventually, greek_mobiles

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make browser installs it)"
)
SHOTS = REPO / "artifacts" / "screenshots"
CONTACTS = 3_000
GREEK = "Γειά σου"  # noqa: RUF001 - lower-case Greek forces UCS-2


@pytest.fixture(scope="module")
async def stack() -> AsyncIterator[LocalStack]:
    # Slow provider answers and small batches leave time to pause mid-send; 1 % rejected gives failures to retry.
    s = LocalStack(
        StackOptions(
            batch_size=300,
            sim={"reject_share": "0.01", "latency_ms": "700", "dlr_delay_ms": "300"},
            env={"sender": {"MAX_CONCURRENT_BULK_CALLS": "1", "BATCHES_PER_POLL": "1"}},
        )
    )
    try:
        await s.start()
        yield s
    finally:
        await s.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        await b.close()


async def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def status_text(page: Any) -> str:
    return str(await page.locator("h1 .badge").inner_text())


async def wait_for_status(page: Any, status: str, timeout_ms: int = 120_000) -> None:
    await page.locator("h1 .badge", has_text=status).wait_for(timeout=timeout_ms)


async def test_a_marketer_creates_sends_pauses_resumes_and_retries_a_campaign(
    stack: LocalStack, browser: Any
) -> None:
    api = Api(stack)
    try:
        _, key = await api.new_tenant(name="Browser boutique")
        contacts = [
            {"phone": p, "firstName": f"Ana{i}"} for i, p in enumerate(greek_mobiles(3_000_000, CONTACTS))
        ]
        r = await api.http.post(
            f"{stack.url('enqueuer')}/api/contacts/import?consent=granted",
            content=orjson.dumps(contacts),
            headers={"X-Api-Key": key, "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["imported"] == CONTACTS
    except BaseException:
        await api.close()
        raise

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{stack.url('projector')}/")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="Campaigns").wait_for()

    await page.get_by_role("link", name="New campaign").click()
    await page.get_by_label("Name", exact=True).fill("Browser autumn sale")
    await page.get_by_label("Message", exact=False).fill("Hi {{first_name}}, 20% off all week!")
    counter = page.locator("#c-counter")
    await counter.filter(has_text="GSM-7").wait_for()
    assert "1 part" in await counter.inner_text()
    await page.get_by_role("button", name="Preview audience").click()
    await page.locator("#c-audience-out", has_text=f"{CONTACTS:,} recipients").wait_for()
    await shot(page, "01-create")
    await page.get_by_role("button", name="Create campaign").click()
    await wait_for_status(page, "draft")

    await page.get_by_role("button", name="Send now").click()
    await page.locator("#confirm-ok").click()  # the confirmation of a send
    await wait_for_status(page, "sending")
    await shot(page, "02-sending")

    await page.get_by_role("button", name="Pause").click()
    await wait_for_status(page, "paused")
    await shot(page, "03-paused")
    await page.get_by_role("button", name="Resume").click()
    await page.locator("#notice", has_text="Resume").wait_for()
    await wait_for_status(page, "completed", timeout_ms=240_000)
    progress = page.locator("#progress-text")
    await progress.filter(has_text=f"{CONTACTS:,} of {CONTACTS:,} processed").wait_for(timeout=60_000)
    failed = int((await page.locator("[data-stat=failed] .n").inner_text()).replace(",", ""))
    assert failed == CONTACTS // 100
    await shot(page, "04-completed")

    campaign_id = page.url.rsplit("/", 1)[-1]
    before = (await api.status(key, campaign_id))["campaign"]["runToken"]
    retry = page.get_by_role("button", name="Retry failed")
    assert await retry.is_enabled()
    await retry.click()
    await page.locator("#confirm-ok").click()
    await page.locator("#notice", has_text="done").wait_for()

    async def retry_run_finished() -> bool:
        c = (await api.status(key, campaign_id))["campaign"]
        return c["runToken"] != before and c["status"] == "completed"

    await eventually(retry_run_finished, what="the retry run to finish", timeout=180)
    await wait_for_status(page, "completed")
    await page.locator(
        "td", has_text="rejected"
    ).first.wait_for()  # the recipients table follows the campaign
    await shot(page, "05-retried")

    await page.get_by_role("link", name="← All campaigns").click()
    row = page.locator("tr", has_text="Browser autumn sale")
    await row.locator(".badge", has_text="completed").wait_for()
    await shot(page, "06-list")
    await page.close()
    await api.close()


async def test_the_campaign_list_reads_well_on_a_phone_and_errors_are_plain_words(
    stack: LocalStack, browser: Any
) -> None:
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    await page.goto(f"{stack.url('projector')}/dashboard/")
    await page.get_by_label("API key").fill("sk_not_a_real_key")
    await page.keyboard.press("Enter")
    await page.locator("#notice", has_text="not accepted").wait_for()
    await shot(page, "07-phone-bad-key")
    await page.close()


@pytest.mark.parametrize(
    "text", ["a" * 160, "a" * 161, "€" * 81, GREEK * 9, "🙂" * 36, "Hi {x} [y] ~z~ " * 12]
)
async def test_the_editor_counts_parts_exactly_as_the_sender_prices_them(
    stack: LocalStack, browser: Any, text: str
) -> None:
    page = await browser.new_page()
    await page.goto(f"{stack.url('projector')}/dashboard/")
    got = await page.evaluate("async (t) => (await import('./sms.js')).segments(t)", text)
    want = segments(text)
    assert (got["encoding"], got["parts"], got["units"], got["leftInPart"]) == (
        want.encoding,
        want.parts,
        want.units,
        want.left_in_part,
    )
    await page.close()
