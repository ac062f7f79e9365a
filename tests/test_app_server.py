"""The web app as users run it: `python app.py --model DIR` in a subprocess on 127.0.0.1 with a tiny
random-weight checkpoint written here (32 kHz, 50 frames/s, as the real models), called through
gradio_client (the official client) and driven in headless Chromium (Debian's chromium + chromedriver,
through selenium): type a prompt, set 2 s, Generate, hear it, download it; errors appear in the page as
messages; Stop ends a 120 s generation while it plays.

Marked `parity` because the checkpoint is written with torch/transformers (testing.save_reference_musicgen),
as the other tests that build checkpoints on disk are. The browser tests skip only when Chromium or its
driver is missing (.ci/run installs both). APP_SCREENSHOT=path.png saves a screenshot of the finished page."""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.parity  # the checkpoint is written with torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the tiny codec at the real rates: hop 8 * 5 * 4 * 4 = 640 samples, 50 frames/s at 32 kHz
CODEC_50HZ = dict(sampling_rate=32000, audio_channels=1, num_filters=4, upsampling_ratios=[8, 5, 4, 4], hidden_size=8,
                  codebook_size=32, target_bandwidths=[1.0], use_causal_conv=False, use_conv_shortcut=False,
                  pad_mode="reflect", normalize=False, chunk_length_s=None)
PROMPT = "happy rock guitar with drums"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py ...` in a subprocess; its output lines collected (the app logs stops there)."""

    def __init__(self, args: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as users have
        env.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, "app.py", *args, "--port", str(self.port)], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the app exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the app did not answer within {timeout} s:\n{self.log()}")

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.log()}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from musicgen_jax.testing import save_reference_musicgen

    checkpoint = str(tmp_path_factory.mktemp("tiny-musicgen"))
    save_reference_musicgen(checkpoint, codec=CODEC_50HZ, seed=1)
    app = Server(["--model", checkpoint, "--queue-size", "2", "--max-duration", "120"])
    try:
        app.wait_ready()
        results = app.wait_for_line(r"finished pieces are kept for an hour in (\S+) ", 5).group(1)
        yield app
    finally:
        app.stop()
    assert app.process.returncode == 0, app.log()  # SIGTERM: a clean stop, as Ctrl-C
    assert not os.path.exists(results), "the results folder was left behind"


def check_wav(data: bytes | str, seconds: float) -> np.ndarray:
    wav, rate = sf.read(io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32", always_2d=True)
    assert rate == 32000 and wav.shape == (int(seconds * 32000), 1)
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0
    return wav


def test_api_client(server):
    """The README's client call: /generate by parameter name; the first output is the wav file."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    wav_path, playlist, picture, status, progress = client.predict(prompt=PROMPT, duration=2, seed=3,
                                                                   api_name="/generate")
    check_wav(wav_path, 2.0)
    assert playlist.endswith(".m3u8") and open(picture, "rb").read(4) == b"\x89PNG"
    assert re.match(r"2\.0 s, 1 channel\(s\) at 32000 Hz with .*tiny-musicgen.*, seed 3: first audio after", status)
    assert progress == "Generated 2.0 of 2 s (seed 3)"


# ------------------------------------------------------------------ in Chromium
def _browser_paths() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    return chromium, driver


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # no driver download: the system's
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str):
    """The app's page, loaded once (the tests go on where the previous one left it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if driver.current_url != url:
        driver.get(url)
    return WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))


def set_value(driver, selector: str, text: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.CSS_SELECTOR, selector)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if text:
        field.send_keys(text)
    field.send_keys(Keys.TAB)


def click(driver, selector: str):
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()


def page_state(driver) -> dict:
    return driver.execute_script("""
        const audio = document.querySelector('#music audio'), link = document.querySelector('#download a[href]');
        return {src: audio ? audio.src : null, time: audio ? audio.currentTime : 0,
                download: link ? link.href : null, status: document.querySelector('#status').innerText.trim(),
                progress: document.querySelector('#progress').innerText.trim(),
                toasts: [...document.querySelectorAll('[data-testid=toast-text]')].map(e => e.innerText),
                text: document.body.innerText};""")


def wait(driver, condition, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page_state(driver)
        if condition(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"the page did not show {what} within {timeout} s: {state}")


def test_browser_generate_listen_download(server, browser):
    open_page(browser, server.url)
    set_value(browser, "#prompt textarea", PROMPT)
    set_value(browser, "#duration input[type=number]", "2")
    click(browser, "#generate")
    state = wait(browser, lambda s: s["download"] and s["src"], 120, "the audio and the download")
    assert state["src"].startswith("blob:")  # the streamed player (HLS through MediaSource)
    assert state["status"].startswith("2.0 s, 1 channel(s) at 32000 Hz")
    with urllib.request.urlopen(state["download"], timeout=30) as response:
        check_wav(response.read(), 2.0)
    assert browser.find_element("css selector", "#picture img").get_attribute("src")
    if os.environ.get("APP_SCREENSHOT"):
        browser.save_screenshot(os.environ["APP_SCREENSHOT"])


def test_browser_shows_errors_as_messages(server, browser):
    open_page(browser, server.url)
    set_value(browser, "#prompt textarea", "")
    click(browser, "#generate")  # empty prompt
    wait(browser, lambda s: any("The prompt is empty" in t for t in s["toasts"]), 30, "the empty-prompt message")
    set_value(browser, "#prompt textarea", "a" * 600)
    click(browser, "#generate")
    too_long = "The prompt is too long: 600 characters, at most 512"
    state = wait(browser, lambda s: any(too_long in t for t in s["toasts"]), 30, "the long-prompt message")
    assert "Traceback" not in state["text"]


def test_browser_stop_while_playing(server, browser):
    """A 120 s piece (long-form: several windows): it plays while it is generated; Stop ends the
    generation (the app logs where) and no file is offered."""
    open_page(browser, server.url)
    set_value(browser, "#prompt textarea", PROMPT)
    set_value(browser, "#duration input[type=number]", "120")
    click(browser, "#generate")
    wait(browser, lambda s: s["time"] > 0.2 and s["progress"].startswith("Generated ") and not s["status"], 120,
         "audio playing while it is generated")
    click(browser, "#stop")
    stopped = server.wait_for_line(r"generation stopped after ([\d.]+) of 120 s", 30)
    assert float(stopped.group(1)) < 120
    time.sleep(1)  # any update still in flight has landed
    state = page_state(browser)
    # Gradio may also mark the cancelled event's status box with its own "Error" badge (a race in its client)
    assert state["status"].endswith("Stopped.") and re.match(r"Generated [\d.]+ of 120 s", state["progress"])
    assert state["download"] is None and "Traceback" not in state["text"]
