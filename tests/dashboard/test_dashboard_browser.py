"""The dashboard end to end in a real headless browser (Debian's chromium via chromedriver).

A real key ceremony, a real coordinator serving its dashboard on loopback and three real agent
daemons (:class:`fedcity.net.agent.Agent`) run two jobs; district-03's agent stops during the
second one. Selenium then logs in through the login form and visits every page, checking
the expected elements and taking a screenshot of each (kept in the test's temporary folder, or
in ``$FEDCITY_DASHBOARD_SCREENSHOTS`` when set).

Skipped, saying so, when chromium or chromedriver is not installed (``make test`` installs them
on Debian when run as root); ``$FEDCITY_CHROMIUM`` and ``$FEDCITY_CHROMEDRIVER`` name other
binaries.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dashkit import DATASET, TERMINAL, leaked_payload, payload_probes, wait_for
from harness import Setup
from loopback import AGENCIES, channel

from fedcity.net.auth import Principal
from fedcity.net.ceremony import deal_federation, read_token
from fedcity.net.coordinator import CoordinatorConfig, serve
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

CHROMIUM = os.environ.get("FEDCITY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (
    os.environ.get("FEDCITY_CHROMEDRIVER")
    or shutil.which("chromedriver")
    or "/usr/bin/chromedriver"
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
QUERY = {
    "table": "requests",
    "group_by": ["ward"],
    "columns": {"ward": {"levels": ["w1", "w2", "w3"]}, "amount": {"clip": [0, 10000]}},
    "aggregate": [
        {"name": "n", "func": "count"},
        {"name": "total", "func": "sum", "column": "amount"},
    ],
    "disclosure": {"min_count": 10},
}
"""A federated query over the agencies' ``requests`` tables (grouped by ward)."""
HEADER_RGB = (0x24, 0x34, 0x47)
"""The page header's colour (style.css): present in a screenshot once the CSS applied."""

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        "the headless-browser dashboard test needs Debian's chromium and chromedriver "
        "(apt-get install chromium chromium-driver; `make test` installs them when run as root)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.expected_conditions import staleness_of  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def live(tmp_path_factory, data):
    """A ceremony, a coordinator with its dashboard, three agent daemons, two finished jobs."""
    from fedcity.net.agent import Agent as AgentDaemon
    from fedcity.net.agent import AgentConfig

    _, spec, tables, _ = data
    root = tmp_path_factory.mktemp("browser")
    files = deal_federation(root / "fed", list(AGENCIES), 2, key_bits=512)
    csv = {}
    for table in tables:
        csv[table.agency] = root / "data" / f"{table.agency}.csv"
        csv[table.agency].parent.mkdir(parents=True, exist_ok=True)
        table.to_frame().to_csv(csv[table.agency], index=False)
    setup = Setup(root / "fed", files, list(AGENCIES), 2, DATASET, spec, csv)
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=root / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            insecure=True,
            heartbeat_interval=0.5,
            max_wait=0.5,
            tick_interval=0.05,
            decrypt_timeout=5.0,
            dashboard_port=0,
        )
    )
    daemons = []
    rng = np.random.default_rng(5)
    for i, agency in enumerate(AGENCIES):
        path = setup.write_agent_config(
            root / "agents" / agency, agency, f"127.0.0.1:{server.port}", insecure=True
        )
        n = (41, 57, 33)[i]
        requests = pd.DataFrame(
            {"ward": rng.choice(["w1", "w2", "w3"], n), "amount": rng.integers(0, 5000, n)}
        )
        requests.to_csv(path.parent / "requests.csv", index=False)
        path.write_text(
            path.read_text()
            + "\n[tables.requests]\n"
            + f"path = {json.dumps(str(path.parent / 'requests.csv'))}\n"
            + 'columns = { ward = "category", amount = "integer" }\n'
        )
        daemons.append(
            AgentDaemon(
                AgentConfig.from_toml(path), fetch_wait_ms=300, backoff_base=0.05, backoff_cap=0.5
            )
        )
    threads = [
        threading.Thread(target=d.run, kwargs={"handle_signals": False}, daemon=True)
        for d in daemons
    ]
    for t in threads:
        t.start()
    token = read_token(files.scientist_tokens["analyst"])
    analyst = Principal("analyst", "scientist")
    jobs = fpb_grpc.JobServiceStub(channel(server.port))
    metadata = (("authorization", f"Bearer {token}"),)

    def submit(**fields) -> str:
        spec_ = fpb.JobSpec(job_type="logistic_regression", params_json='{"C": 0.5}', **fields)
        return jobs.SubmitJob(spec_, metadata=metadata, timeout=10).job_id

    def state(job_id: str):
        return server.coordinator.snapshot_job(analyst, job_id).job

    try:
        wait_for(
            lambda: all(
                a.registered and a.connected and a.tables
                for a in server.coordinator.snapshot_health(analyst).agencies
            ),
            timeout=60,
            what="three registered agents",
        )
        full = submit(dataset=DATASET, evaluate_dataset=DATASET)
        wait_for(lambda: state(full).state in TERMINAL, timeout=240, what="the first job")
        partial = submit(dataset=DATASET, min_agencies=2)
        wait_for(lambda: state(partial).rounds_done >= 1, timeout=120, what="a released round")
        daemons[2].stop("maintenance window")
        wait_for(lambda: state(partial).state in TERMINAL, timeout=240, what="the second job")
        query = jobs.SubmitJob(
            fpb.JobSpec(job_type="query", params_json=json.dumps(QUERY)),
            metadata=metadata,
            timeout=10,
        ).job_id
        wait_for(lambda: state(query).state in TERMINAL, timeout=240, what="the query")
        payloads = [
            e.payload
            for job_id in (full, partial, query)
            for e in server.coordinator.store.events(job_id)
            if e.payload and e.type in ("contribution", "partial")
        ]
        yield {
            "url": f"http://127.0.0.1:{server.dashboard_port}",
            "token": token,
            "agency_token": read_token(files.agency_tokens[AGENCIES[0]]),
            "full": state(full),
            "partial": state(partial),
            "query": state(query),
            "payloads": payloads,
        }
    finally:
        for d in daemons:
            d.stop()
        for t in threads:
            t.join(timeout=10)
        server.stop(grace=0)


def chromium(profile: Path):
    """A headless chromium driven by chromedriver, with a fresh profile folder."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    except WebDriverException:  # a loaded machine can miss chromedriver's start deadline once
        driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    target = os.environ.get("FEDCITY_DASHBOARD_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver, folder: Path, name: str) -> Path:
    """A screenshot of the whole page; checks it is a real rendering of the styled page."""
    from PIL import Image

    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1280, min(max(height + 40, 600), 6000))
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), name
    image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
    assert image.width >= 1000 and image.height >= 300, (name, image.size)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, name  # text and charts, not a blank page
    assert any(rgb == HEADER_RGB for _, rgb in colours), name  # the stylesheet applied
    return path


def images_loaded(driver) -> list[bool]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('img.result-chart'))"
        ".map(i => i.complete && i.naturalWidth > 0)"
    )


def texts(driver, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def log_in(driver, url: str, token: str) -> None:
    driver.get(url + "/login")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    click(driver, driver.find_element(By.CSS_SELECTOR, "form#login button"))


def click(driver, element) -> None:
    """Click and wait until the next page replaced this one."""
    element.click()
    WebDriverWait(driver, 30).until(staleness_of(element))
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )


def test_every_page_in_a_headless_browser(live, browser, shots):
    url = live["url"]
    full, partial, query = live["full"], live["partial"], live["query"]
    assert full.state == partial.state == query.state == "succeeded", (full, partial, query)
    assert [a for a, _ in partial.departures] == [AGENCIES[2]]
    probes = payload_probes(live["payloads"])
    taken = []

    # not logged in: the login form, with status 401 behind it
    browser.get(url + "/jobs")
    assert browser.find_element(By.ID, "login").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, "nav")
    taken.append(screenshot(browser, shots, "01-login"))

    # an agency's token is refused
    log_in(browser, url, live["agency_token"])
    assert "no dashboard access" in browser.find_element(By.ID, "login-error").text
    assert browser.get_cookie("fedcity_dashboard") is None

    log_in(browser, url, live["token"])
    wait_for(lambda: browser.current_url.endswith("/health"), timeout=10, what="the health page")
    assert browser.get_cookie("fedcity_dashboard")["httpOnly"]
    assert "analyst (scientist)" in browser.find_element(By.ID, "principal").text
    connected = browser.find_element(By.ID, "card-connected").text
    assert "2 / 3" in connected and "threshold t = 2" in connected  # district-03 stopped
    assert browser.find_element(By.ID, "card-storage").text.startswith("OK")
    assert len(browser.find_element(By.ID, "key-id").text) == 32
    taken.append(screenshot(browser, shots, "02-health"))

    browser.get(url + "/agencies")
    rows = {
        e.get_attribute("data-agency"): e.text
        for e in browser.find_elements(By.CSS_SELECTOR, "tr.agency")
    }
    assert sorted(rows) == sorted(AGENCIES)
    assert "not connected" in rows[AGENCIES[2]] and "not connected" not in rows[AGENCIES[0]]
    assert all(DATASET in text and "ago" in text for text in rows.values())
    taken.append(screenshot(browser, shots, "03-agencies"))

    browser.get(url + "/jobs")
    jobs = {
        e.get_attribute("data-job"): e.text
        for e in browser.find_elements(By.CSS_SELECTOR, "tr.job")
    }
    assert set(jobs) == {full.id, partial.id, query.id}
    assert "succeeded" in jobs[full.id] and "3 of 3" in jobs[full.id]
    assert "2 of 3" in jobs[partial.id] and "1 left" in jobs[partial.id]
    taken.append(screenshot(browser, shots, "04-jobs"))

    click(browser, browser.find_element(By.LINK_TEXT, full.id))
    assert browser.find_element(By.ID, "job-state").text == "succeeded"
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.round")) == full.rounds_done
    bars = browser.find_elements(By.CSS_SELECTOR, "svg#chart-seconds rect.bar")
    assert len(bars) >= full.rounds_done
    assert browser.find_elements(By.CSS_SELECTOR, "svg#chart-bytes rect.bar")
    assert browser.find_element(By.ID, "no-departures").is_displayed()
    assert "mean_radius" in browser.find_element(By.ID, "coefficients").text
    loaded = images_loaded(browser)
    assert len(loaded) == 5 and all(loaded), loaded  # training, participation, coef., ROC, cal.
    taken.append(screenshot(browser, shots, "05-job-result"))

    browser.get(url + f"/jobs/{partial.id}")
    departures = texts(browser, "#departures tr.departure")
    assert len(departures) == 1 and departures[0].startswith(AGENCIES[2])
    assert "stopped" in departures[0]
    counts = [int(t) for t in texts(browser, "tr.round td:nth-child(3)")]  # contributors
    assert counts[0] == 3 and counts[-1] == 2
    taken.append(screenshot(browser, shots, "06-job-departure"))

    browser.get(url + f"/jobs/{query.id}")
    cells = browser.find_element(By.ID, "cells")
    header = [e.text for e in cells.find_elements(By.CSS_SELECTOR, "th")]
    assert header[:3] == ["ward", "n", "total"]
    wards = [e.text for e in cells.find_elements(By.CSS_SELECTOR, "tbody td:first-child")]
    assert wards == ["w1", "w2", "w3"]
    loaded = images_loaded(browser)
    assert len(loaded) == 1 and all(loaded), loaded  # the query's chart
    taken.append(screenshot(browser, shots, "07-query-result"))

    browser.get(url + "/results")
    assert len(browser.find_elements(By.CSS_SELECTOR, "section.released")) == 3
    loaded = images_loaded(browser)
    assert len(loaded) == 5 and all(loaded), loaded
    taken.append(screenshot(browser, shots, "08-results"))

    pages = ("/health", "/agencies", "/jobs", "/results")
    for page in (*pages, *(f"/jobs/{j.id}" for j in (full, partial, query))):
        browser.get(url + page)
        assert leaked_payload(browser.page_source.encode(), probes) is None, page

    click(browser, browser.find_element(By.CSS_SELECTOR, "form.who button"))
    assert browser.find_element(By.ID, "login").is_displayed()
    browser.get(url + "/jobs")
    assert browser.find_element(By.ID, "login").is_displayed()  # the session is gone
    assert len(taken) == 8 and all(p.stat().st_size > 10_000 for p in taken)
