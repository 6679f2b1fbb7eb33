"""The search page in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against the service on a loopback port: a typed query, an image
upload, "more like this", a refusal shown to the user, and scene tiles drawn over their
quicklook. Screenshots are left in the test's tmp folder. Skipped, with the reason, only
where no browser can start (tools/install_browser.sh installs one)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request

import pytest
import uvicorn

from rs_hashing.hashing_model import HashingModel
from rs_hashing.index import archive_indexing
from rs_hashing.service import create_app
from tests import testing

WAIT_SECONDS = 60
DOCS_SCREENSHOT = os.path.join(testing.REPO_ROOT, "docs", "results", "search_page.png")
DEMO_RUN = os.path.join(testing.REPO_ROOT, "runs", "demo", "run")
DEMO_INDEX = os.path.join(testing.REPO_ROOT, "runs", "demo", "scenes.index")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1100")


class LiveServer:
    """uvicorn serving `app` on a free loopback port from a thread."""

    def __init__(self, app):
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + WAIT_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def get_json(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=WAIT_SECONDS) as response:
            return json.load(response)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(WAIT_SECONDS)
        self._socket.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.common.exceptions import WebDriverException  # pylint: disable=import-outside-toplevel
    from selenium.webdriver.chrome.service import Service  # pylint: disable=import-outside-toplevel

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no browser: Debian's chromium and chromium-driver are not installed "
                    "(tools/install_browser.sh installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    except WebDriverException as e:
        pytest.skip(f"Chromium cannot start here: {(e.msg or str(e)).strip().splitlines()[0]}")
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def folder_server(folder_archive):
    server = LiveServer(create_app(folder_archive.model, folder_archive.index, index_path=folder_archive.path))
    yield server
    server.stop()


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=import-outside-toplevel

    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def _status(driver) -> str:
    return driver.find_element("id", "status").text


def _hits(driver) -> list:
    return driver.find_elements("css selector", "#hits .hit")


def _loaded(driver, image) -> bool:
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)


def _console_errors(driver) -> list[str]:
    """Errors the page logged (failed loads, blocked resources, script errors), apart from
    the API's own refusals, which the page shows to the user."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "/api/search" not in entry["message"]]


def _search(driver, text: str) -> None:
    box = driver.find_element("id", "query")
    box.clear()
    box.send_keys(text)
    driver.find_element("id", "search-button").click()


def test_typed_query_upload_and_more_like_this(browser, folder_server, folder_archive, tmp_path):
    browser.get(folder_server.url + "/")
    _wait(browser, lambda d: "bits" in d.find_element("id", "identity").text, "the service identity")
    assert "12 images" in browser.find_element("id", "identity").text

    text = "many green trees are near the river ."
    expected = folder_server.get_json("/api/search", text=text, k=20)["hits"]
    _search(browser, text)
    _wait(browser, lambda d: "hits for" in _status(d), "the typed query's hits")
    cards = _hits(browser)
    assert len(cards) == 12 and [int(card.get_attribute("data-id")) for card in cards] == [h["id"] for h in expected]
    first = cards[0]
    assert first.find_element("css selector", ".class").text == expected[0]["metadata"]["class"]
    assert first.find_element("css selector", ".distance").text == f"distance {expected[0]['hamming']}"
    _wait(browser, lambda d: _loaded(d, first.find_element("tag name", "img")), "the first thumbnail")
    browser.save_screenshot(str(tmp_path / "typed_query.png"))

    upload = os.path.join(folder_archive.root, folder_archive.items[4]["file"])
    browser.find_element("id", "upload").send_keys(upload)
    _wait(browser, lambda d: f"for image {os.path.basename(upload)}" in _status(d), "the image query's hits")
    distances = [card.find_element("css selector", ".distance").text for card in _hits(browser)]
    assert distances[0] == "distance 0"  # the archive holds the uploaded image itself
    assert "4" in [card.get_attribute("data-id") for card in _hits(browser) if
                   card.find_element("css selector", ".distance").text == "distance 0"]

    liked = _hits(browser)[0].get_attribute("data-id")
    _hits(browser)[0].find_element("css selector", ".more-like-this").click()
    _wait(browser, lambda d: f"for items like #{liked}" in _status(d), "the more-like-this hits")
    similar = folder_server.get_json(f"/api/similar/{liked}", k=20)["hits"]
    assert [card.get_attribute("data-id") for card in _hits(browser)] == [str(h["id"]) for h in similar]
    assert liked not in [card.get_attribute("data-id") for card in _hits(browser)]
    screenshot = tmp_path / "search_page.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    assert _console_errors(browser) == []


def test_a_refusal_is_shown_and_the_page_keeps_working(browser, folder_server):
    browser.get(folder_server.url + "/")
    browser.find_element("css selector", "#filters summary").click()
    browser.find_element("id", "bbox").send_keys("1,2,3")
    _search(browser, "boats in the sea")
    _wait(browser, lambda d: d.find_element("id", "status").get_attribute("class") == "status error", "the refusal")
    assert "four numbers" in _status(browser)
    browser.find_element("id", "bbox").clear()
    _search(browser, "boats in the sea")
    _wait(browser, lambda d: "hits for" in _status(d), "hits after the refusal")
    assert _console_errors(browser) == []


def _show_scene_hits(browser, server, text: str, k: int, screenshot: str) -> list[dict]:
    browser.get(server.url + "/")
    k_box = browser.find_element("id", "k")
    k_box.clear()
    k_box.send_keys(str(k))
    _search(browser, text)
    _wait(browser, lambda d: "hits for" in _status(d), "the scene hits")
    hits = server.get_json("/api/search", text=text, k=k)["hits"]
    boxes = browser.find_elements("css selector", "#maps .box")
    assert len(boxes) == len(hits) == k
    quicklook = browser.find_element("css selector", "#maps .frame img")
    _wait(browser, lambda d: _loaded(d, quicklook), "the quicklook")
    for card in _hits(browser)[:3]:
        _wait(browser, lambda d, card=card: _loaded(d, card.find_element("tag name", "img")), "the tile thumbnails")
    browser.save_screenshot(screenshot)
    return hits


def test_scene_tiles_are_drawn_over_their_quicklook(browser, scene_archive, tmp_path):
    server = LiveServer(create_app(scene_archive.model, scene_archive.index))
    try:
        hits = _show_scene_hits(browser, server, "open water of a lake", 6, str(tmp_path / "scenes.png"))
        frame = browser.find_element("css selector", "#maps .frame")
        box = browser.find_element("css selector", f'#maps .box[data-id="{hits[0]["id"]}"]')
        x0, y0, x1, _ = hits[0]["locator"]["box"]
        width = frame.size["width"]
        assert abs((box.location["x"] - frame.location["x"]) - x0 * width) <= 2
        assert abs(box.size["width"] - (x1 - x0) * width) <= 2
        assert _console_errors(browser) == []
    finally:
        server.stop()


@pytest.mark.skipif(not (os.path.isdir(DEMO_RUN) and os.path.isfile(DEMO_INDEX)),
                    reason="no demo run here (rs-hashing demo --workdir=runs/demo makes one)")
def test_the_demo_archive_page(browser, tmp_path):
    """The page over the demo's trained run and scene index; with
    RS_HASHING_DOCS_SCREENSHOT=1 its screenshot becomes docs/results/search_page.png."""
    model = HashingModel.from_run(DEMO_RUN)
    server = LiveServer(create_app(model, archive_indexing.open_index(DEMO_INDEX, model), index_path=DEMO_INDEX))
    try:
        screenshot = str(tmp_path / "demo_search_page.png")
        hits = _show_scene_hits(browser, server, "a sandy beach along the sea", 12, screenshot)
        assert all(hit["footprint"]["type"] == "Polygon" for hit in hits)
    finally:
        server.stop()
    if os.environ.get("RS_HASHING_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
