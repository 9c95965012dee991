"""The report page in a real browser: headless Chromium (Debian's package) loads it from ./server.

The test judges a small round through the real server, then opens
``/submissions/<id>/report`` of the near copy in Chromium driven by
Selenium through Debian's chromedriver. The key travels in an
``Authorization: Basic`` header set through the DevTools protocol, never
in the URL. It takes a screenshot, checks that the three plots are
there and drawn, and that nothing failed to load (network events and
the browser's console).

``SAVE_REPORT_SCREENSHOT=1`` also copies the screenshot to
``docs/report.png``, the picture in docs/api.md.
"""
import base64
import json
import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import REPO, Predictor, load_round, make_round, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: No sandbox (root in CI), no GPU, nothing phoning home. Debian's Chromium opens its search
#: engine's start page at launch; every host name but the loopback address resolves to
#: nothing, so not even a DNS query leaves the machine.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--window-size=1280,1700")
WAIT = 60

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
                       reason="Chromium is not installed here (apt-get install chromium chromium-driver; .ci/run does)"),
]


def judged_round(storage, start_server):
    """Four users, one a near copy of another; returns (server, round) once every submission is done."""
    rnd = make_round(301, 31)
    make = Predictor(rnd, 31)
    alice = make.model()
    rnd.add("alice", alice, shuffle_seed=1)
    rnd.add("bob", make.model())
    rnd.add("carol", make.near_copy(alice), shuffle_seed=3)  # not original: alice's predictions
    rnd.add("dave", make.noise(), shuffle_seed=4)
    load_round(storage, rnd)
    server = start_server()
    for sub in rnd.submissions:
        response = server.post(sub.submission_id, user_id=sub.username)
        assert response.status_code == 202, response.text

    def all_done():
        states = {sub.submission_id: server.show(sub.submission_id).json()["status"] for sub in rnd.submissions}
        assert "failed" not in states.values(), "%s\n%s" % (states, server.tail())
        return set(states.values()) == {"done"}
    wait_for(all_done, WAIT, "every submission to be done", server.tail, interval=0.2)
    return server, rnd


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a fresh profile, driven through Debian's chromedriver."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=%s" % (tmp_path / "chromium-profile"))
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)  # a given driver path: nothing is downloaded
    driver.set_page_load_timeout(WAIT)
    driver.get("about:blank")  # leave the launch's own start page before anything is judged
    for log in ("performance", "browser"):
        driver.get_log(log)
    try:
        yield driver
    finally:
        driver.quit()


def network_events(driver):
    """DevTools network events since the last call: [(method, params)]."""
    events = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"].startswith("Network."):
            events.append((message["method"], message["params"]))
    return events


def test_report_in_a_real_browser(storage, start_server, browser, tmp_path):
    server, rnd = judged_round(storage, start_server)
    copier = next(sub for sub in rnd.submissions if sub.username == "carol")
    alice = next(sub for sub in rnd.submissions if sub.username == "alice")
    credentials = base64.b64encode(("support:" + server.api_key).encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Basic " + credentials}})
    url = "%s/submissions/%s/report" % (server.url, copier.submission_id)
    assert server.api_key not in url

    browser.get(url)
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return document.readyState") == "complete")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10000
    if os.environ.get("SAVE_REPORT_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "report.png")

    # the page: the sentence, and three plots actually drawn
    assert copier.submission_id in browser.title
    sentence = browser.find_element(By.ID, "sentence-originality").text
    assert sentence.startswith("not original: its predictions") and alice.submission_id in sentence
    plots = browser.find_elements(By.CSS_SELECTOR, "figure svg")
    assert len(plots) == 3, server.tail()
    for plot in plots:
        assert plot.size["width"] > 300 and plot.size["height"] > 150, plot.size
        assert len(plot.find_elements(By.CSS_SELECTOR, "path")) > 5
    assert len(browser.find_elements(By.CSS_SELECTOR, "#plot-originality svg path")) > 5

    # nothing failed: one document, answered 200, no failed load, no console error
    events = network_events(browser)
    responses = [params["response"] for method, params in events if method == "Network.responseReceived"]
    failed = [params for method, params in events if method == "Network.loadingFailed"]
    assert failed == [], failed
    assert [(r["url"], r["status"]) for r in responses] == [(url, 200)], responses
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
    assert server.api_key not in browser.current_url


def test_report_without_the_key_answers_401_asking_for_basic_auth(storage, start_server, browser):
    server, rnd = judged_round(storage, start_server)
    browser.execute_cdp_cmd("Network.enable", {})
    url = "%s/submissions/%s/report" % (server.url, rnd.submissions[0].submission_id)
    browser.get(url)
    WebDriverWait(browser, WAIT).until(lambda d: d.execute_script("return document.readyState") == "complete")
    responses = [params["response"] for method, params in network_events(browser) if method == "Network.responseReceived"]
    assert [(r["url"], r["status"]) for r in responses] == [(url, 401)]
    headers = {name.lower(): value for name, value in responses[0]["headers"].items()}
    assert headers["www-authenticate"] == 'Basic realm="submission-criteria"'
    assert browser.find_elements(By.CSS_SELECTOR, "svg") == []
