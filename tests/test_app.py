"""The Streamlit app: AppTest in-process, and a real headless Chromium end to end."""

from __future__ import annotations

import io
import shutil
import time
from importlib import resources

import pytest
from PIL import Image

from skinlesion.classes import CODES

from .conftest import running_app, shared

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
    assert "calibrated probability" in text and "at which it advises a dermatologist soon" in text
    assert not at.table  # one probability display, not a chart and a table
    chart = next(str(m.value) for m in at.markdown if 'class="sl-prob"' in str(m.value))
    import re

    assert sorted(re.findall(r"\((\w+)\)</span>", chart)) == sorted(CODES)
    values = [float(v) for v in re.findall(r">([\d.]+) %</span></div>", chart)]
    assert len(values) == len(CODES) and values == sorted(values, reverse=True)  # ranked, with their values
    assert "Triage:" in text and "Prediction set (90 %): one of" in text
    assert "not a medical device" in text
    assert any("Model card" in str(h.value) for h in at.sidebar.header)
    sidebar = " ".join(str(m.value) for m in at.sidebar.markdown)
    from skinlesion.bundle import onnx_for

    in_use = "onnx" if onnx_for("default") is not None else "torch"
    assert "| accuracy |" in sidebar and f"Back end:** {in_use}" in sidebar  # the back end actually serving
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
    assert not at.exception and "calibrated probability" in _texts(at)
    assert not [e for e in at.error if "Could not analyse" in str(e.value)]


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
    browser = None
    with running_app(tmp_path) as (server, port):
        try:
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
            wait.until(lambda b: "calibrated probability" in b.find_element(By.TAG_NAME, "body").text)
            body = browser.find_element(By.TAG_NAME, "body").text
            assert "not a medical device" in body and "at which it advises a dermatologist soon" in body
            assert all(code in body for code in CODES)
            shot = tmp_path / "app.png"
            browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
            print(f"screenshot: {shot}")
        finally:
            if browser is not None:
                browser.quit()


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
    from skinlesion.verdict import verdict

    assert html.count("<tr><td>") == 7 and verdict(pred, p.config).headline in html


@pytest.mark.browser
def test_real_browser_gating_several_uploads_heat_map_report_and_phone(default_model, tmp_path):
    """In headless Chromium, as a clinician would use it: the bundled sample button gives a result with a
    tier and its ground truth; a cat photo gets no diagnosis until
    "Analyse anyway"; four uploads put the summary table first; the heat map sits beside the
    original; the downloaded report names the model version; desktop and phone screenshots."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data as skdata

    from skinlesion.bundle import load_config, resolve_model_path

    real = shared("fullres", "ISIC_0024310.jpg")
    small = sorted(shared("dermamnist28", "images").glob("*.jpg"))[:3]
    cat = tmp_path / "cat.jpg"
    Image.fromarray(skdata.chelsea()).save(cat, "JPEG")
    version = (load_config(resolve_model_path("default")).created_with or {}).get("skinlesion")
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    def browser_at(width, height):
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"):
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={tmp_path / f'profile{width}'}")
        opts.add_argument(f"--window-size={width},{height}")
        opts.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
        b = webdriver.Chrome(service=Service(driver), options=opts)
        b.get(f"http://127.0.0.1:{port}/")
        return b

    def body(b):
        return b.find_element(By.TAG_NAME, "body").text

    def upload(b, wait, paths, until):
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0].send_keys("\n".join(str(p) for p in paths))
        wait.until(lambda b: until in body(b))

    browsers = []
    with running_app(tmp_path) as (server, port):
        try:
            # a phone: the notice is on the first screen, and the page works there too
            phone = browser_at(400, 850)
            browsers.append(phone)
            wait = WebDriverWait(phone, 120)
            wait.until(lambda b: "not a medical device" in body(b))
            upload(phone, wait, [real], "Download results (CSV)")
            tier = phone.find_element(By.XPATH, "//*[contains(text(), 'Triage')]")
            assert tier.rect["y"] + tier.rect["height"] < 850, tier.rect  # the tier is on the phone's first screen
            phone.save_screenshot(str(tmp_path / "phone.png"))
            # the desktop: the sample button first, as a visitor without an image of their own
            desk = browser_at(1400, 1000)
            browsers.append(desk)
            wait = WebDriverWait(desk, 120)
            wait.until(lambda b: b.find_elements(By.XPATH, "//button[contains(., 'Try a sample')]"))[0].click()
            wait.until(lambda b: "Triage" in body(b) and "Ground truth: Melanoma (mel), confirmed by histopathology" in body(b))
            assert "Sample image: HAM10000" in body(desk) and "CC BY-NC-SA 4.0" in body(desk)
            desk.refresh()
            upload(desk, wait, [cat], "No diagnosis is shown")
            text = body(desk)
            assert "calibrated probability" not in text and "Analyse anyway (unreliable)" in text  # no diagnosis shown
            desk.find_element(By.XPATH, "//*[contains(text(), 'Analyse anyway (unreliable)')]").click()
            wait.until(lambda b: "calibrated probability" in body(b))  # only on request
            desk.refresh()
            upload(desk, wait, [real, *small], "Download results (CSV)")
            text = body(desk)
            first_detail = text.index(f"keyboard_arrow_right\n{real.name}")  # the first image's expander
            assert text.index("Results") < first_detail  # several uploads: the summary first
            desk.save_screenshot(str(tmp_path / "desktop_four.png"))
            desk.refresh()
            upload(desk, wait, [real], "Download report (HTML)")
            desk.find_element(By.XPATH, "//*[contains(text(), 'Show Grad-CAM heat map')]").click()
            wait.until(lambda b: "Grad-CAM for" in body(b))
            captions = [
                e.text for e in desk.find_elements(By.CSS_SELECTOR, "[data-testid='stImageCaption'], [data-testid='stCaptionContainer']")
            ]
            images = desk.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, img")
            assert any("original" in c for c in captions) and any(c.startswith("Grad-CAM for") for c in captions), captions
            assert len(images) >= 3  # the photo, the original beside the heat map, the heat map (and its colour scale)
            heat_caption = desk.find_element(By.XPATH, "//*[starts-with(normalize-space(.), 'Grad-CAM for')]")
            desk.execute_script("arguments[0].scrollIntoView({block: 'center'})", heat_caption)
            time.sleep(0.5)
            desk.save_screenshot(str(tmp_path / "desktop_heatmap.png"))
            desk.find_element(By.XPATH, "//button[contains(., 'Download report (HTML)')]").click()
            assert _wait_for_file(downloads, "_report.html", 60), "the report was not downloaded"
            report = next(downloads.glob("*_report.html")).read_text()
            assert version and version in report and "not a medical device" in report
            for shot in ("phone.png", "desktop_four.png", "desktop_heatmap.png"):
                assert (tmp_path / shot).stat().st_size > 10_000
            print(f"screenshots in {tmp_path}")
        finally:
            for b in browsers:
                b.quit()


def _wait_for_file(folder, suffix, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(p.name.endswith(suffix) for p in folder.iterdir()):
            return True
        time.sleep(0.2)
    return False


def test_app_sample_button_analyses_the_bundled_melanoma_with_its_credit_and_ground_truth(default_model):
    from streamlit.testing.v1 import AppTest

    from skinlesion.sample import bundled_path

    assert bundled_path().is_file() and bundled_path().with_name("README.md").is_file()  # the license and credit beside it
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Try a sample: ISIC_0024310.jpg"]
    assert "calibrated probability" not in _texts(at)
    at.button[0].click().run()
    assert not at.exception, at.exception
    text = _texts(at)
    assert "calibrated probability" in text and "Sample image: HAM10000: Tschandl, Rosendahl & Kittler" in text
    assert "License: CC BY-NC-SA 4.0" in text
    assert "Ground truth: Melanoma (mel), confirmed by histopathology." in text
    assert "4 of its 5 members trained on it" in text  # the sample is no test of the shipped model, and says so
    assert "Analysed with: age 60, male, chest." in text  # the sample's own patient data, shown with its result
    assert any("Triage" in str(w.value) for w in [*at.warning, *at.error, *at.success])  # the tier banner


def test_app_sample_can_be_another_real_image_with_its_own_credit(default_model, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    real = tmp_path / "mine.jpg"
    shutil.copy(shared("fullres", "ISIC_0024310.jpg"), real)
    monkeypatch.setenv("SKINLESION_SAMPLE", str(real))
    monkeypatch.setenv("SKINLESION_SAMPLE_CREDIT", "my clinic, CC BY 4.0")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert [b.label for b in at.button] == ["Try a sample: mine.jpg"]
    at.button[0].click().run()
    text = _texts(at)
    assert "Sample image: my clinic, CC BY 4.0" in text and "Ground truth" not in text  # no JSON beside it: no truth claimed


def test_a_crafted_upload_name_is_one_sentence_and_the_uploader_stays(app_test):
    """Streamlit's own type filter raised StreamlitAPIException on a .heic name and lost the uploader for the session."""
    at = app_test
    at.file_uploader[0].set_value(("photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(64), "image/heic"))
    at.run()
    assert not at.exception, at.exception
    errors = [str(e.value) for e in at.error]
    assert errors == [
        "Could not analyse photo.heic: photo.heic is a .heic file, not a JPEG or PNG image; export it as JPEG or PNG and upload it again."
    ]
    assert len(at.file_uploader) == 1  # still there: the next upload works
    real = shared("fullres", "ISIC_0024310.jpg").read_bytes()
    at.file_uploader[0].set_value(("ISIC_0024310.jpg", real, "image/jpeg"))
    at.run()
    assert not at.exception and "calibrated probability" in _texts(at)


# ---- issue 28: the ecosystem's port settings ----------------------------------------------------------


def test_the_app_port_is_streamlits_own_setting_unless_port_is_given(tmp_path, monkeypatch):
    from skinlesion.cli import _app_port
    from skinlesion.errors import SkinLesionError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAMLIT_SERVER_PORT", raising=False)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text("[server]\nport = 8123\n")
    assert _app_port(None) == 8123  # ./.streamlit/config.toml, as `streamlit run` reads it
    monkeypatch.setenv("STREAMLIT_SERVER_PORT", "8765")
    assert _app_port(None) == 8765  # the environment over the file, as Streamlit orders them
    assert _app_port(9001) == 9001  # --port over both
    monkeypatch.setenv("STREAMLIT_SERVER_PORT", "eighty")
    with pytest.raises(SkinLesionError, match="STREAMLIT_SERVER_PORT is out of range"):
        _app_port(None)
    monkeypatch.delenv("STREAMLIT_SERVER_PORT")
    (tmp_path / ".streamlit" / "config.toml").unlink()
    from streamlit import config

    assert _app_port(None) == (8501 if config.get_where_defined("server.port") == "<default>" else config.get_option("server.port"))


@pytest.mark.slow
def test_streamlit_server_port_in_the_environment_is_where_the_app_serves(default_model, tmp_path):
    import os
    import subprocess
    import sys
    import urllib.request

    from .conftest import free_port

    port = free_port()
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "STREAMLIT_SERVER_PORT": str(port)}
    cmd = [sys.executable, "-m", "skinlesion.cli", "app", "--address", "127.0.0.1"]  # no --port
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.time() + 180  # a cold start on a loaded 2-core machine
        healthy = False
        while time.time() < deadline and server.poll() is None and not healthy:
            try:
                healthy = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok"
            except OSError:
                time.sleep(0.2)
        assert healthy, (tmp_path / "server.log").read_text()
        assert f"127.0.0.1:{port}" in (tmp_path / "server.log").read_text()  # and it says so
    finally:
        import signal

        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_used_patient_data_words():
    from skinlesion.app import used_patient_data

    assert used_patient_data({"age": 60, "sex": "male", "localization": "chest"}) == "age 60, male, chest"
    assert used_patient_data({"age": None, "sex": "unknown", "localization": "lower_extremity"}) == "lower extremity"
    assert used_patient_data({}) == "no patient data"
