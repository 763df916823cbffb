"""The Streamlit app: AppTest in-process, and a real headless Chromium end to end."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import resources

import pytest
from PIL import Image

from skinlesion.classes import CODES

from .conftest import shared

APP = str(resources.files("skinlesion") / "app.py")


def _texts(at) -> str:
    parts = []
    for kind in ("markdown", "caption", "warning", "error", "info", "success", "title", "subheader"):
        parts += [str(getattr(e, "value", "")) for e in getattr(at, kind)]
    for t in at.table:
        parts.append(t.value.to_string())
    return "\n".join(parts)


@pytest.fixture
def app_test(default_model):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_app_shows_diagnosis_seven_probabilities_and_notice(app_test):
    at = app_test
    assert "not a medical device" in _texts(at)
    real = shared("fullres", "ISIC_0024310.jpg").read_bytes()
    at.file_uploader[0].set_value(("ISIC_0024310.jpg", real, "image/jpeg"))
    at.run()
    assert not at.exception, at.exception
    text = _texts(at)
    assert "Calibrated probability:" in text and "Malignant/benign summary" in text
    table = at.table[0].value
    assert sorted(table.index) == sorted(CODES) and table["probability"].str.endswith("%").all()
    values = table["probability"].str.rstrip("%").astype(float).tolist()
    assert values == sorted(values, reverse=True)  # ranked, most likely first
    assert "Triage:" in text and "Prediction set (90 %): one of" in text
    assert "not a medical device" in text
    assert any("Model card" in str(h.value) for h in at.sidebar.header)
    assert len(at.get("download_button")) == 2  # the CSV and the image's report


def test_app_warns_on_a_cat_and_survives_a_corrupt_file(app_test):
    from skimage import data as skdata

    at = app_test
    buf = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buf, "JPEG")
    at.file_uploader[0].set_value(
        [("cat.jpg", buf.getvalue(), "image/jpeg"), ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")]
    )
    at.run()
    assert not at.exception, at.exception
    warnings = " ".join(str(w.value) for w in at.warning)
    assert "does not look like the dermoscopic images" in warnings and "No diagnosis is shown" in warnings
    assert any(e.label == "Analyse anyway (unreliable)" for e in at.expander)  # the answer stays behind it
    assert at.subheader[0].value == "Results"  # several uploads: the summary table comes first
    errors = " ".join(str(e.value) for e in at.error)
    assert "Could not analyse broken.jpg" in errors
    # the app keeps working: a good upload afterwards is analysed
    real = shared("fullres", "ISIC_0024310.jpg").read_bytes()
    at.file_uploader[0].set_value(("ISIC_0024310.jpg", real, "image/jpeg"))
    at.run()
    assert not at.exception and "Calibrated probability:" in _texts(at) and not at.error


def test_app_gradcam_toggle(app_test):
    at = app_test
    real = shared("fullres", "ISIC_0024310.jpg").read_bytes()
    at.file_uploader[0].set_value(("ISIC_0024310.jpg", real, "image/jpeg"))
    at.toggle[0].set_value(True)
    at.run()
    assert not at.exception, at.exception
    captions = [c for img in at.get("image") for c in img.captions]
    assert any(c.startswith("Grad-CAM for ") for c in captions), captions
    assert (
        captions.index("original") < [i for i, c in enumerate(captions) if c.startswith("Grad-CAM for ")][0]
    )  # side by side, original first
    assert any(c.startswith("colour scale of the heat map") for c in captions), captions


def test_colour_scale_runs_from_blue_to_red_like_the_overlay():
    import numpy as np

    from skinlesion.explain import colour_scale, overlay

    legend = np.asarray(colour_scale(200, 30)).astype(int)
    left, right = legend[5, 2], legend[5, -3]
    assert left[2] > 100 and left[0] < 60  # blue: least evidence
    assert right[0] > 100 and right[2] < 60  # red: most evidence
    grey = Image.new("RGB", (40, 40), (128, 128, 128))
    hot = np.asarray(overlay(grey, np.ones((8, 8))), int)[20, 20]
    cold = np.asarray(overlay(grey, np.zeros((8, 8))), int)[20, 20]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # the overlay uses the same colours


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_real_browser_end_to_end(default_model, tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    real = shared("fullres", "ISIC_0024310.jpg")
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "skinlesion.cli", "app", "--port", str(port), "--address", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    browser = None
    try:
        t0 = time.time()
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() - t0 < 20, "no /_stcore/health answer within 20 s"
            time.sleep(0.2)
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,2000",
        ):
            opts.add_argument(flag)
        browser = webdriver.Chrome(service=Service(driver), options=opts)
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 120)
        upload = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0]
        upload.send_keys(str(real))
        # the page streams in: wait for its last element, the CSV download
        wait.until(lambda b: "Download results (CSV)" in b.find_element(By.TAG_NAME, "body").text)
        wait.until(lambda b: "Calibrated probability" in b.find_element(By.TAG_NAME, "body").text)
        body = browser.find_element(By.TAG_NAME, "body").text
        assert "not a medical device" in body and "Malignant/benign summary" in body
        assert all(code in body for code in CODES)
        shot = tmp_path / "app.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        if browser is not None:
            browser.quit()
        os.killpg(server.pid, signal.SIGTERM)  # stop the server (and streamlit under it) by its PID
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    assert server.returncode is not None


def test_report_html_carries_the_image_probabilities_tier_and_model_version(tiny_run):
    from skinlesion.predict import Predictor
    from skinlesion.report import NOTICE, report_html

    data, _, run = tiny_run
    p = Predictor(run, backend="torch")
    img = Image.open(sorted((data / "images").glob("*.jpg"))[0]).convert("RGB")
    pred = p.predict_images([img], ["lesion.jpg"])[0]
    html = report_html(p, pred, img)
    assert "data:image/png;base64," in html and NOTICE in html and p.model_hash in html
    assert f"skinlesion {p.config.created_with['skinlesion']}" in html and f"{pred.top_probability:.1%}" in html
    assert html.count("<tr><td>") == 7 and (pred.tier or "n/a") in html
