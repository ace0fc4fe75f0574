"""The dashboard's pages and JSON endpoints against a real coordinator on loopback.

Three jobs ran through the real gRPC API with in-test agents (see ``conftest.py``): the
analyst's evaluated logistic regression, the analyst's job that district-03 declined, and a
rival scientist's job. Every page and endpoint is read over real HTTP.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import httpx
import pytest
from dashkit import (
    AGENCIES,
    DATASET,
    DECLINE_REASON,
    KINDS,
    SECOND,
    TOKENS,
    DashAgent,
    figure_texts,
    json_numbers,
    leaked_figure,
    leaked_payload,
    payload_probes,
    submit,
    write_files,
)
from loopback import drive, runtime, start

from fedcity.dashboard import DashboardServer
from fedcity.dashboard.app import MAX_BODY_BYTES, MAX_PAGE_JOBS, MAX_PAGE_RESULTS, SESSION_COOKIE
from fedcity.net.auth import Authenticator, AuthError

PAGES = ("/health", "/agencies", "/jobs", "/results")


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS[name]}"}


def get(fed, path: str, who: str | None = "analyst", **kwargs) -> httpx.Response:
    headers = bearer(who) if who else {}
    return httpx.get(fed.url + path, headers=headers, timeout=30, **kwargs)


def every_endpoint(fed) -> list[str]:
    """Every page, JSON endpoint and chart the analyst may read."""
    full, partial = fed.jobs["full"], fed.jobs["partial"]
    paths = [*PAGES, "/api/health", "/api/agencies", "/api/jobs"]
    for job_id in (full, partial):
        paths += [f"/jobs/{job_id}", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/result"]
        charts = get(fed, f"/api/jobs/{job_id}/result").json()["charts"]
        paths += [f"/jobs/{job_id}/charts/{name}.svg" for name in charts]
    return paths


# -- content -------------------------------------------------------------------------------------
def test_health_and_agencies(federation):
    fed = federation
    health = get(fed, "/api/health").json()
    assert health["members"] == 3 and health["threshold"] == 2
    assert health["connected"] == 3 and health["registered"] == 3
    assert health["running_jobs"] == 0 and health["storage_ok"] and health["accepting"]
    assert health["key_id"] == fed.server.federation.key_id.hex()

    agencies = {a["name"]: a for a in get(fed, "/api/agencies").json()["agencies"]}
    assert sorted(agencies) == sorted(AGENCIES)
    for a in agencies.values():
        assert a["connected"] and a["member"]
        assert a["datasets"] == sorted([DATASET, SECOND])
        assert a["steps"] == sorted(KINDS)
        assert a["last_seen_unix"] > health["now_unix"] - 60

    page = get(fed, "/agencies").text
    for name in AGENCIES:
        assert f'data-agency="{name}"' in page
    assert "glm.newton" in page and SECOND in page and "connected" in page
    assert "threshold 2 of 3 agencies" in get(fed, "/health").text


def test_jobs_round_by_round_with_departures(federation):
    fed = federation
    listed = {j["id"]: j for j in get(fed, "/api/jobs").json()["jobs"]}
    assert set(listed) == {fed.jobs["full"], fed.jobs["partial"]}  # not the rival's
    assert all(j["owner"] == "analyst" and j["state"] == "succeeded" for j in listed.values())

    detail = get(fed, f"/api/jobs/{fed.jobs['partial']}").json()
    job = detail["job"]
    assert job["departures"] == [["district-03", f"declined round 0: {DECLINE_REASON}"]]
    assert job["rounds_done"] == len(detail["rounds"]) > 0
    assert [r["number"] for r in detail["rounds"]] == list(range(1, job["rounds_done"] + 1))
    for r in detail["rounds"]:
        assert r["contributors"] == 2 and r["decryptors"] == 2
        assert r["upload_bytes"] > 0 and r["decrypt_bytes"] > 0
        assert set(r["seconds"]) >= {"aggregation", "combination"}
        assert all(v >= 0 for v in r["seconds"].values())
    assert any(r["loss"] is not None for r in detail["rounds"])

    full = get(fed, f"/api/jobs/{fed.jobs['full']}").json()
    assert full["job"]["departures"] == [] and full["has_result"]
    assert {r["contributors"] for r in full["rounds"]} == {3}
    assert full["rounds"][-1]["kind"] == "eval.model"

    page = get(fed, f"/jobs/{fed.jobs['partial']}").text
    assert "district-03" in page and DECLINE_REASON.replace("'", "&#39;") in page
    assert page.count('<tr class="round">') == job["rounds_done"]
    assert 'id="chart-seconds"' in page and 'id="chart-bytes"' in page
    assert page.count('class="bar"') >= job["rounds_done"]
    jobs_page = get(fed, "/jobs").text
    assert fed.jobs["full"] in jobs_page and fed.jobs["partial"] in jobs_page
    assert fed.jobs["rival"] not in jobs_page and "1 left" in jobs_page


def test_released_results_with_pictures(federation):
    fed = federation
    summary = get(fed, f"/api/jobs/{fed.jobs['full']}/result").json()
    assert summary["kind"] == "model" and summary["model_type"] == "glm"
    assert summary["charts"] == ["training", "participation", "coefficients", "roc", "calibration"]
    assert 0.5 < summary["metrics"]["roc_auc"] <= 1.0
    names = [name for name, _ in summary["coefficients"]]
    assert names[0] == "intercept" and "mean_radius" in names
    assert all(math.isfinite(v) for _, v in summary["coefficients"])
    for name in summary["charts"]:
        r = get(fed, f"/jobs/{fed.jobs['full']}/charts/{name}.svg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/svg+xml"
        assert r.content.lstrip().startswith(b"<?xml") and b"<svg" in r.content
    assert get(fed, f"/jobs/{fed.jobs['full']}/charts/nonsense.svg").status_code == 404

    page = get(fed, f"/jobs/{fed.jobs['full']}").text
    for name in summary["charts"]:
        assert f'src="/jobs/{fed.jobs["full"]}/charts/{name}.svg"' in page
    results = get(fed, "/results").text
    assert results.count('class="released"') == 2 and fed.jobs["rival"] not in results


# -- privacy ---------------------------------------------------------------------------------------
def test_no_contribution_bytes_and_no_agency_figure_anywhere(federation):
    fed = federation
    payloads = fed.payloads()
    assert len(payloads) > 20  # contributions, partial decryptions and close records
    probes = payload_probes(payloads)
    patterns = figure_texts(fed.figures)
    own = [v for values in fed.figures.values() for v in values]
    # the detectors find what they look for
    assert leaked_payload(b"x" + payloads[0][:64].hex().encode(), probes)
    assert leaked_figure(f"rows: {int(fed.figures['district-01'][0])}.", patterns)

    for path in every_endpoint(fed):
        r = get(fed, path)
        assert r.status_code == 200, path
        assert leaked_payload(r.content, probes) is None, path
        if path.endswith(".svg"):
            continue  # drawn from released values only; checked for payload bytes above
        assert leaked_figure(r.text, patterns) is None, (path, leaked_figure(r.text, patterns))
        if path.startswith("/api/"):
            numbers = json_numbers(r.json())
            for v in own:
                assert not any(math.isclose(n, v, rel_tol=1e-9) for n in numbers), (path, v)


# -- authentication and roles --------------------------------------------------------------------
def test_without_a_known_token_401_without_details(federation):
    fed = federation
    for path in [*every_endpoint(fed), "/api/jobs/000000000000"]:
        for headers in ({}, {"authorization": "Bearer not-a-token"}, {"authorization": "Basic x"}):
            r = httpx.get(fed.url + path, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers)
            assert "not-a-token" not in r.text and "analyst" not in r.text
            if path.startswith("/api/"):
                assert r.json() == {"error": "authentication required"}
            else:
                assert 'id="login"' in r.text and r.headers["content-type"].startswith("text/html")


def test_agencies_have_no_access(federation):
    fed = federation
    for path in every_endpoint(fed):
        r = get(fed, path, "district-01")
        assert r.status_code == 403, path
        assert "district-01" not in r.text and "(agency)" not in r.text
        if path.startswith("/api/"):
            assert r.json() == {"error": "forbidden"}
        else:
            assert '<p class="error" id="error">forbidden</p>' in r.text


def test_a_scientist_sees_only_their_own_jobs(federation):
    fed = federation
    rival, full = fed.jobs["rival"], fed.jobs["full"]
    assert [j["id"] for j in get(fed, "/api/jobs", "rival").json()["jobs"]] == [rival]
    assert get(fed, f"/api/jobs/{rival}", "rival").status_code == 200
    for path in (f"/api/jobs/{full}", f"/api/jobs/{full}/result", f"/jobs/{full}"):
        r = get(fed, path, "rival")
        assert r.status_code == 403 and "analyst" not in r.text, path
    r = get(fed, f"/jobs/{full}/charts/roc.svg", "rival")
    assert r.status_code == 403 and b"<svg" not in r.content
    assert get(fed, f"/api/jobs/{rival}", "analyst").status_code == 403
    assert get(fed, "/api/health", "rival").status_code == 200  # health is for every scientist


def test_operators_see_health_agencies_and_every_jobs_state_only(federation):
    fed = federation
    assert get(fed, "/api/health", "ops").json()["members"] == 3
    assert len(get(fed, "/api/agencies", "ops").json()["agencies"]) == 3
    jobs = {j["id"]: j for j in get(fed, "/api/jobs", "ops").json()["jobs"]}
    assert set(jobs) == set(fed.jobs.values())
    assert jobs[fed.jobs["rival"]]["owner"] == "rival"
    page = get(fed, "/jobs", "ops").text
    assert "All jobs" in page and "<td>rival</td>" in page
    assert 'href="/jobs/' not in page and 'href="/results"' not in page
    for path in every_endpoint(fed):
        if path.startswith(("/jobs/", "/api/jobs/")) or path == "/results":
            r = get(fed, path, "ops")
            assert r.status_code == 403 and b"<svg" not in r.content, path


def test_browser_sessions(federation):
    fed = federation
    with httpx.Client(base_url=fed.url, timeout=30) as browser:
        assert browser.get("/jobs").status_code == 401
        r = browser.post("/login", data={"token": "wrong"})
        assert r.status_code == 401 and "not accepted" in r.text and "wrong" not in r.text
        r = browser.post("/login", data={"token": TOKENS["district-02"]})
        assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")
        r = browser.post("/login", data={"token": TOKENS["analyst"]})
        assert r.status_code == 303 and r.headers["location"] == "/health"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert TOKENS["analyst"].lower() not in cookie  # a random session id, not the token
        page = browser.get("/jobs")
        assert page.status_code == 200 and fed.jobs["full"] in page.text
        assert browser.post("/logout").status_code == 303
        assert browser.get("/jobs").status_code == 401


def test_session_ids_cannot_be_forged(federation):
    fed = federation
    for value in ("", "x", TOKENS["analyst"], "a" * 5000):
        r = httpx.get(fed.url + "/api/health", cookies={SESSION_COOKIE: value}, timeout=30)
        assert r.status_code in (401, 431, 400), value[:10]


# -- bounds and headers ----------------------------------------------------------------------------
def test_bounded_requests(federation):
    fed = federation
    assert get(fed, f"/api/jobs?limit={MAX_PAGE_JOBS + 1}").status_code == 400
    assert get(fed, "/api/jobs?limit=0").status_code == 400
    assert get(fed, "/api/jobs?limit=abc").status_code == 400
    assert len(get(fed, "/api/jobs?limit=1").json()["jobs"]) == 1
    assert get(fed, "/api/jobs?x=" + "a" * 1000).status_code == 414
    assert get(fed, "/api/" + "a" * 1000).status_code == 414
    r = httpx.post(fed.url + "/login", content=b"token=" + b"a" * MAX_BODY_BYTES, timeout=30)
    assert r.status_code == 413
    r = httpx.post(fed.url + "/login", content=b"&".join([b"a=1"] * 10), timeout=30)
    assert r.status_code == 400
    assert get(fed, f"/results?limit={MAX_PAGE_RESULTS + 1}").status_code == 400
    r = get(fed, "/api/jobs/not-a-job-id")
    assert r.status_code == 400 and "12 hexadecimal" in r.json()["error"]
    assert get(fed, "/api/jobs/0123456789ab").status_code == 404
    assert get(fed, "/api/nothing-here").status_code == 404
    assert httpx.delete(fed.url + "/api/health", headers=bearer("analyst")).status_code == 405


def test_security_headers_and_read_only(federation):
    fed = federation
    r = get(fed, "/health")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert "<script" not in r.text
    for path in ("/api/health", "/api/jobs", f"/api/jobs/{fed.jobs['full']}"):
        r = httpx.post(fed.url + path, headers=bearer("analyst"), timeout=30)
        assert r.status_code == 405, path


# -- configuration ------------------------------------------------------------------------------
def test_dashboard_is_off_by_default_and_plain_http_only_on_loopback(tmp_path, key):
    files = write_files(tmp_path, key)
    server = start(files)
    try:
        assert server.dashboard_port == 0 and server._dashboard is None
    finally:
        server.stop(grace=0)
    with pytest.raises(AuthError, match="loopback"):
        start(files, dashboard_port=0, dashboard_host="0.0.0.0")
    with pytest.raises(ValueError, match="dashboard_port"):
        start(files, dashboard_port=70000)
    with pytest.raises(AuthError, match="tls-cert"):
        DashboardServer(object(), Authenticator([]), tls=(None, None))  # type: ignore[arg-type]


def test_https_dashboard_with_the_coordinators_certificate(tmp_path):
    from fedcity.net.ceremony import deal_federation, read_token
    from fedcity.net.coordinator import CoordinatorConfig, serve

    files = deal_federation(tmp_path / "fed", list(AGENCIES), 2, key_bits=512)
    token = read_token(files.scientist_tokens["analyst"])
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            tls_cert=files.server_cert,
            tls_key=files.server_key,
            dashboard_port=0,
        )
    )
    try:
        url = f"https://127.0.0.1:{server.dashboard_port}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/api/health", timeout=10)  # not trusted without the CA
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{server.dashboard_port}/api/health", timeout=10)
        trusted = ssl.create_default_context(cafile=str(files.ca_cert))
        with httpx.Client(verify=trusted, timeout=30) as client:
            r = client.get(url + "/api/health", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["members"] == 3
            r = client.post(url + "/login", data={"token": token})
            assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
    finally:
        server.stop(grace=0)
    assert json.loads(files.credentials.read_text())["principals"]


def test_cli_serves_the_dashboard_with_dashboard_port(tmp_path, key):
    files = write_files(tmp_path, key)
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    grpc_port, web_port = ports
    cmd = [sys.executable, "-m", "fedcity.cli", "coordinator", "serve", "--insecure"]
    cmd += ["--listen", f"127.0.0.1:{grpc_port}", "--db", str(files["db"])]
    cmd += ["--federation", str(files["federation"]), "--credentials", str(files["credentials"])]
    cmd += ["--dashboard-port", str(web_port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{web_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(url + "/api/health", headers=bearer("analyst"), timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["members"] == 3
        assert httpx.get(url + "/api/health", timeout=5).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/api/health", timeout=5)  # stopped with the coordinator


def test_a_running_job_live(tmp_path, key, data):
    """A job whose agencies have not answered yet, then after its first round."""
    _, _, tables, _ = data
    server = start(write_files(tmp_path, key), dashboard_port=0)
    try:
        agents = [
            DashAgent(n, t, key).connect(server.port) for n, t in zip(AGENCIES, tables, strict=True)
        ]
        for a in agents:
            a.register()
        job_id = submit(server.port, "analyst")
        url = f"http://127.0.0.1:{server.dashboard_port}"
        fed = type("Live", (), {"url": url})
        assert get(fed, "/api/health").json()["running_jobs"] == 1
        job = get(fed, f"/api/jobs/{job_id}").json()
        assert job["job"]["state"] == "running" and job["rounds"] == []
        assert job["job"]["current_label"].startswith("statistics")
        assert not job["has_result"]
        assert get(fed, f"/api/jobs/{job_id}/result").status_code == 409
        page = get(fed, f"/jobs/{job_id}").text
        assert 'http-equiv="refresh"' in page and 'id="no-rounds"' in page
        assert "now: statistics" in page

        drive(agents, lambda: runtime(server, job_id).rounds_done >= 1)
        job = get(fed, f"/api/jobs/{job_id}").json()
        assert job["job"]["state"] == "running" and len(job["rounds"]) >= 1
        assert job["rounds"][0]["contributors"] == 3
        page = get(fed, f"/jobs/{job_id}").text
        assert page.count('<tr class="round">') == len(job["rounds"])
    finally:
        server.stop(grace=0)


def test_https_dashboard_under_mutual_tls_uses_the_ca_folders_certificate(tmp_path):
    """With --ca-dir the gRPC port wants client certificates; the dashboard serves HTTPS with
    the CA folder's server certificate and still reads bearer tokens of the credentials."""
    from fedcity.governance.enrollment import CADirectory
    from fedcity.net.ceremony import deal_federation, read_token
    from fedcity.net.coordinator import CoordinatorConfig, serve

    files = deal_federation(tmp_path / "fed", list(AGENCIES), 2, key_bits=512)
    folder = CADirectory.init(tmp_path / "ca", "riverside", ("localhost", "127.0.0.1"))
    server = serve(
        CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            ca_dir=folder.root,
            dashboard_port=0,
        )
    )
    try:
        url = f"https://127.0.0.1:{server.dashboard_port}/api/health"
        trusted = ssl.create_default_context(cafile=str(folder.ca_cert))
        token = read_token(files.scientist_tokens["analyst"])
        r = httpx.get(url, headers={"authorization": f"Bearer {token}"}, verify=trusted)
        assert r.status_code == 200 and r.json()["members"] == 3
        assert httpx.get(url, verify=trusted).status_code == 401
    finally:
        server.stop(grace=0)
