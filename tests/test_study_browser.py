"""A real headless Chromium on the reading page: invite link -> answer 3 cases -> close -> reopen -> case 4."""

from __future__ import annotations

import re
import shutil

import pytest

from skinlesion.study.create import invite
from skinlesion.study.reading import reader_order
from skinlesion.study.store import Answer, Case, Reader, Store, Study

from .conftest import running_app
from .study_support import synthetic_study

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _browser(chromium, driver, profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1200,2400",
    ):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


def test_invite_link_three_answers_close_reopen_case_four(tmp_path, monkeypatch):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (tools/ensure-chromium.sh installs them as root)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    db = tmp_path / "study.sqlite"
    monkeypatch.setenv("SKINLESION_STUDY_DB", str(db))
    store = Store(db)
    sid, _ = synthetic_study(
        store, ["mel", "nv", "bcc", "bkl", "nv", "df"], ["mel", "nv", "nv", "bkl", "nv", "df"], [0.9, 0.1, 0.4, 0.2, 0.1, 0.1]
    )
    ((_, _, token),) = invite(store, sid, 1)
    with store.session() as s:
        study, reader = s.get(Study, sid), s.query(Reader).one()
        ids = [c.id for c in s.query(Case).filter(Case.study_id == sid).order_by(Case.position)]
        position = {c.id: c.position for c in s.query(Case)}
        expected = [position[c] for c in reader_order(study, reader, ids)]

    def body(b):
        return b.find_element(By.TAG_NAME, "body").text

    def shown_case(b) -> int | None:
        m = re.search(r"^Case (\d+)$", body(b), re.M)
        return int(m.group(1)) if m else None

    with running_app(tmp_path) as (_, port):
        link = f"http://127.0.0.1:{port}/?study={sid}&token={token}"
        browser = _browser(chromium, driver, tmp_path / "profile1")
        try:
            browser.get(link)
            wait = WebDriverWait(browser, 120)
            for k in range(3):
                wait.until(lambda b: f"{k} of 6 cases finished" in body(b) and shown_case(b) is not None)
                assert shown_case(browser) == expected[k]
                for text in ("(nv)", "reassure"):
                    wait.until(lambda b: b.find_elements(By.XPATH, f"//label[contains(., '{text}')]"))[0].click()
                wait.until(lambda b: b.find_elements(By.XPATH, "//button[contains(., 'Lock answer')]"))[0].click()
                wait.until(lambda b: f"{k + 1} of 6 cases finished" in body(b))
        finally:
            browser.save_screenshot(str(tmp_path / "reading.png"))
            browser.quit()  # the reader closes the browser
        with store.session() as s:
            assert s.query(Answer).count() == 3
        browser = _browser(chromium, driver, tmp_path / "profile2")  # a fresh browser, no cookies: only the link
        try:
            browser.get(link)
            WebDriverWait(browser, 120).until(lambda b: "3 of 6 cases finished" in body(b) and shown_case(b) is not None)
            assert shown_case(browser) == expected[3]
            assert "diagnosis was" not in body(browser) and "IMG_" not in body(browser)
        finally:
            browser.quit()
