"""The ``fedcity`` command line (subprocesses) and the client behind it (a fake JobService)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest

from fedcity.cli import main
from fedcity.net.client import Client, ClientError
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

TOKEN = "analyst-token-123"


def fedcity(*args, cwd=None, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "fedcity.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc, code, match):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


# -- help -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "keys"),
        (("keys",), "deal"),
        (("keys", "deal"), "--threshold"),
        (("agent", "run"), "--config"),
        (("job",), "submit"),
        (("job", "submit"), "--privacy"),
        (("job", "watch"), "JOB"),
        (("job", "result"), "--out"),
        (("job", "cancel"), "JOB"),
        (("agencies", "list"), "--json"),
        (("coordinator",), "serve"),
    ],
)
def test_help(args, expected):
    proc = fedcity(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: fedcity")
    assert expected in proc.stdout


def test_coordinator_serve_is_delegated():
    proc = fedcity("coordinator", "serve", "--help")
    if importlib.util.find_spec("fedcity.net.coordinator") is None:
        assert_one_line_error(proc, 1, "the coordinator is not available")
    else:
        assert proc.returncode == 0, proc.stderr
        assert "usage:" in proc.stdout


# -- errors ---------------------------------------------------------------------------------------
CONNECT = ("--coordinator", "127.0.0.1:9", "--insecure")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((), "required: COMMAND"),
        (("fly",), "invalid choice: 'fly'"),
        (
            ("job", "submit", "--type", "r", "--dataset", "d", "--bogus"),
            "unrecognized arguments: --bogus",
        ),
        (
            ("job", "submit", "--type", "ridge", "--dataset", "d", "--params", "{C: 1}"),
            "argument --params: invalid JSON",
        ),
        (
            ("job", "submit", "--type", "ridge", "--dataset", "d", "--params", "[1]"),
            "expected a JSON object",
        ),
        (
            ("job", "submit", "--type", "ridge", "--dataset", "d", "--params", '{"C": NaN}'),
            "NaN is not allowed",
        ),
        (
            ("job", "submit", "--type", "ridge", "--dataset", "d", "--min-agencies", "-1"),
            "non-negative",
        ),
        (("job", "watch", "J", "--ca-file", "x", "--insecure"), "either --ca-file or --insecure"),
        (("job", "watch", "J", "--token-file", "t", "--insecure"), "--coordinator is required"),
        (
            ("job", "watch", "J", "--coordinator", "127.0.0.1:9", "--insecure"),
            "--token-file is required",
        ),
        (
            ("job", "watch", "J", "--coordinator", "127.0.0.1:9", "--token-file", "t"),
            "give --ca-file",
        ),
        (
            ("job", "watch", "J", "--coordinator", "nowhere", "--token-file", "t", "--insecure"),
            "--coordinator: coordinator address must be 'host:port'",
        ),
        (
            ("job", "watch", "J", "--coordinator", "10.1.1.1:9", "--token-file", "t", "--insecure"),
            "--insecure is allowed only with a loopback",
        ),
        (
            ("keys", "deal", "--agencies", "a,,b", "--threshold", "1", "--out", "x"),
            "comma-separated list",
        ),
        (
            ("keys", "deal", "--agencies", "a,b", "--threshold", "3", "--out", "x"),
            "--threshold must lie between 1 and the number of agencies (2)",
        ),
        (
            ("keys", "deal", "--agencies", "a,b", "--threshold", "two", "--out", "x"),
            "invalid int value",
        ),
        (
            ("keys", "deal", "--agencies", "a,b", "--key-holder", "c", "--out", "x"),
            "--key-holder 'c' is not one of --agencies",
        ),
        (
            ("keys", "deal", "--agencies", "a,b", "--key-holder", "a", "--threshold", "1"),
            "not allowed with argument",
        ),
        (
            ("keys", "deal", "--agencies", "a,b", "--out", "x"),
            "one of the arguments --threshold --key-holder is required",
        ),
        (("agent", "run"), "the following arguments are required: --config"),
    ],
)
def test_usage_errors_exit_2(args, match):
    assert_one_line_error(fedcity(*args), 2, match)


def test_missing_config_exits_1(tmp_path):
    proc = fedcity("agent", "run", "--config", str(tmp_path / "absent.toml"))
    assert_one_line_error(proc, 1, "cannot read config file")


def test_runtime_errors_exit_1(tmp_path, token_file, capsys):
    # in process (the subprocess path is the same main(); this keeps the suite fast)
    bad_toml = tmp_path / "agency.toml"
    bad_toml.write_text('agency = "a"\ncoordinator = \n')
    incomplete = tmp_path / "incomplete.toml"
    incomplete.write_text('agency = "a"\ncoordinator = "127.0.0.1:9"\n')
    cases = [
        (("agent", "run", "--config", str(bad_toml)), "invalid TOML"),
        (("agent", "run", "--config", str(incomplete)), "key 'token_file' is required"),
        (("agent", "run", "--config", str(tmp_path)), "cannot read config file"),
        (
            ("job", "watch", "J", *CONNECT, "--token-file", str(tmp_path / "nope")),
            "cannot read token file",
        ),
        (
            (
                "job",
                "watch",
                "J",
                "--coordinator",
                "127.0.0.1:9",
                "--token-file",
                str(token_file),
                "--ca-file",
                str(tmp_path / "ca.pem"),
            ),
            "cannot read CA file",
        ),
        (
            ("keys", "deal", "--agencies", "a,a", "--threshold", "1", "--out", str(tmp_path)),
            "names must be unique",
        ),
    ]
    for args, match in cases:
        assert main(list(args)) == 1, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and match in lines[0], captured.err
        assert "Traceback" not in captured.err


def test_unreachable_coordinator_exits_1(token_file):
    proc = fedcity("agencies", "list", *CONNECT, "--token-file", str(token_file))
    assert_one_line_error(proc, 1, "nothing is listening at 127.0.0.1:9")


def test_keys_deal(tmp_path):
    out = tmp_path / "fed"
    deal = ["keys", "deal", "--agencies", "a,b,c", "--threshold", "2", "--out", str(out)]
    proc = fedcity(*deal, "--key-bits", "256", "--scientists", "ana,bo")
    assert proc.returncode == 0, proc.stderr
    assert f"federation written to {out}" in proc.stdout
    assert (out / "agencies" / "c" / "share.json").is_file()
    assert (out / "scientists" / "bo" / "token").is_file()
    names = [
        p["name"]
        for p in json.loads((out / "coordinator/credentials.json").read_text())["principals"]
    ]
    assert names == ["a", "b", "c", "ana", "bo"]
    again = fedcity(*deal, "--key-bits", "256")
    assert_one_line_error(again, 1, "refusing to overwrite")


def test_keys_deal_key_holder(tmp_path):
    out = tmp_path / "fed"
    args = ["keys", "deal", "--agencies", "a,b,c", "--key-holder", "b", "--out", str(out)]
    proc = fedcity(*args, "--key-bits", "256")
    assert proc.returncode == 0, proc.stderr
    assert "agency b: " in proc.stdout and "private-key.json" in proc.stdout
    assert (out / "agencies" / "b" / "private-key.json").is_file()
    assert (out / "agencies" / "a" / "public-key.json").is_file()
    assert not (out / "agencies" / "a" / "share.json").exists()
    public = json.loads((out / "federation-public.json").read_text())
    assert public["decryption"] == "key-holder" and public["key_holder"] == "b"


def test_data_synth(tmp_path):
    proc = fedcity(
        "data", "synth", "--agencies", "3", "--out", "data", "--rows", "300", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    sizes = []
    for agency in ("district-1", "district-2", "district-3"):
        frame = pd.read_csv(tmp_path / "data" / agency / "flood.csv")
        holdout = pd.read_csv(tmp_path / "data" / agency / "flood_holdout.csv")
        assert set(frame["flooded"]) <= {0, 1} and frame["flooded"].dtype.kind == "i"
        assert list(holdout.columns) == list(frame.columns)
        assert f"{agency}: data/{agency}/flood.csv ({len(frame):,} rows)" in proc.stdout
        sizes.append(len(frame))
    assert sum(sizes) == 300 and sizes == sorted(sizes, reverse=True)  # unequal districts
    again = fedcity("data", "synth", "--agencies", "3", "--out", "data", cwd=tmp_path)
    assert_one_line_error(again, 1, "refusing to overwrite")
    named = fedcity(
        "data", "synth", "--agencies", "north,south", "--out", "d2", "--task", "fire",
        "--rows", "100", cwd=tmp_path,
    )  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert (tmp_path / "d2" / "south" / "fire.csv").is_file()


@pytest.mark.parametrize(
    ("args", "code", "match"),
    [
        (("--agencies", "0"), 2, "expected 1 to 100 agencies"),
        (("--agencies", "a,,b"), 2, "comma-separated list"),
        (("--agencies", "3", "--rows", "10"), 1, "rows must lie in [90,"),
        (("--agencies", "3", "--task", "floods"), 2, "invalid choice"),
    ],
)
def test_data_synth_refuses(tmp_path, args, code, match):
    proc = fedcity("data", "synth", "--out", "data", *args, cwd=tmp_path)
    assert_one_line_error(proc, code, match)
    assert not (tmp_path / "data").exists()


def test_keys_deal_with_data_dir(tmp_path):
    missing = fedcity(
        "keys", "deal", "--agencies", "a,b", "--threshold", "2", "--key-bits", "256",
        "--data-dir", "data", "--out", "fed", cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(missing, 2, "fedcity data synth --agencies a,b --out data")
    assert (
        fedcity("data", "synth", "--agencies", "a,b", "--out", "data", cwd=tmp_path).returncode == 0
    )
    proc = fedcity(
        "keys", "deal", "--agencies", "a,b", "--threshold", "2", "--key-bits", "256",
        "--data-dir", "data", "--coordinator", "localhost:7000", "--out", "fed", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "fedcity agent run --config fed/agencies/a/agency.toml" in proc.stdout
    text = (tmp_path / "fed" / "agencies" / "b" / "agency.toml").read_text()
    assert 'coordinator = "localhost:7000"' in text
    assert 'path = "../../../data/b/flood.csv"' in text


def test_agent_run_prints_the_paths_it_resolved(tmp_path):
    assert (
        fedcity("data", "synth", "--agencies", "a,b", "--out", "data", cwd=tmp_path).returncode == 0
    )
    deal = fedcity(
        "keys", "deal", "--agencies", "a,b", "--threshold", "2", "--key-bits", "256",
        "--data-dir", "data", "--coordinator", "127.0.0.1:9", "--out", "fed", cwd=tmp_path,
    )  # fmt: skip
    assert deal.returncode == 0, deal.stderr
    config = "fed/agencies/a/agency.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcity.cli", "agent", "run", "--config", config],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines = []
    assert proc.stderr is not None
    while not any("starting: coordinator" in line for line in lines):
        line = proc.stderr.readline()
        assert line, lines
        lines.append(line)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    text = "".join(lines)
    root = tmp_path.resolve()
    assert f"configuration {root}/fed/agencies/a/agency.toml" in text
    for what, path in (
        ("token", "fed/agencies/a/token"),
        ("key", "fed/agencies/a/share.json"),
        ("CA", "fed/agencies/a/ca.pem"),
        ("dataset flood", "data/a/flood.csv"),
        ("table flood", "data/a/flood.csv"),
    ):
        assert re.search(rf"  {what} +{re.escape(str(root / path))}\n", text), (what, text)


# -- the client against a fake JobService ----------------------------------------------------------
RESULT = {"history": [{"round": 0, "kind": "stats.counts"}], "model": {"type": "logistic"}}


class FakeJobs(fpb_grpc.JobServiceServicer):
    def __init__(self):
        self.auth = []
        self.submitted = []
        self.lock = threading.Lock()

    def _seen(self, context):
        value = dict(context.invocation_metadata()).get("authorization")
        self.auth.append(value)
        if value != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown token")

    def SubmitJob(self, request, context):  # noqa: N802
        self._seen(context)
        if request.job_type == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown job type 'bad'")
        self.submitted.append(request)
        return fpb.JobStatus(job_id="job-1", state=fpb.JOB_STATE_QUEUED)

    def WatchJob(self, request, context):  # noqa: N802
        self._seen(context)
        yield fpb.JobEvent(status=fpb.JobStatus(job_id=request.job_id, state=fpb.JOB_STATE_QUEUED))
        for i in range(2):
            record = {"round": i, "label": f"round {i}", "contributors": ["a", "b"], "loss": 0.5}
            yield fpb.JobEvent(
                status=fpb.JobStatus(
                    job_id=request.job_id,
                    state=fpb.JOB_STATE_RUNNING,
                    rounds_done=i + 1,
                    current_round_label=f"round {i + 1}",
                ),
                round_record_json=json.dumps(record),
            )
        final = fpb.JOB_STATE_SUCCEEDED if request.job_id == "job-1" else fpb.JOB_STATE_FAILED
        yield fpb.JobEvent(
            status=fpb.JobStatus(
                job_id=request.job_id,
                state=final,
                rounds_done=2,
                failure="" if final == fpb.JOB_STATE_SUCCEEDED else "too few agencies",
            )
        )

    def GetResult(self, request, context):  # noqa: N802
        self._seen(context)
        if request.job_id == "job-1":
            return fpb.JobResult(
                status=fpb.JobStatus(job_id="job-1", state=fpb.JOB_STATE_SUCCEEDED, rounds_done=2),
                result_json=json.dumps(RESULT),
            )
        if request.job_id == "job-failed":
            return fpb.JobResult(
                status=fpb.JobStatus(
                    job_id="job-failed", state=fpb.JOB_STATE_FAILED, failure="too few agencies"
                )
            )
        context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id!r}")

    def ListAgencies(self, request, context):  # noqa: N802
        self._seen(context)
        spec = json.dumps({"numeric": ["x"], "categorical": {"c": ["u", "v"]}, "label": "y"})
        return fpb.ListAgenciesResponse(
            agencies=[
                fpb.AgencyInfo(
                    name="district-01",
                    connected=True,
                    last_seen_unix=1.7e9,
                    datasets=[fpb.DatasetInfo(name="inspections", feature_spec_json=spec)],
                ),
                fpb.AgencyInfo(name="district-02", connected=False),
            ]
        )

    def CancelJob(self, request, context):  # noqa: N802
        self._seen(context)
        return fpb.JobStatus(job_id=request.job_id, state=fpb.JOB_STATE_CANCELLED)


@pytest.fixture
def jobs():
    fake = FakeJobs()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fpb_grpc.add_JobServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.address = f"127.0.0.1:{port}"
    yield fake
    server.stop(0).wait()


def test_client_calls(jobs):
    with Client(jobs.address, TOKEN, insecure=True) as client:
        job_id = client.submit(
            "logistic_regression",
            {"C": 0.5},
            "inspections",
            agencies=["district-01", "district-02"],
            min_agencies=2,
            evaluate_dataset="holdout",
            privacy={"epsilon": 1.0},
        )
        assert job_id == "job-1"
        spec = jobs.submitted[0]
        assert json.loads(spec.params_json) == {"C": 0.5}
        assert list(spec.agencies) == ["district-01", "district-02"]
        assert spec.min_agencies == 2 and spec.evaluate_dataset == "holdout"
        assert json.loads(spec.privacy_json) == {"epsilon": 1.0}
        events = list(client.watch(job_id))
        assert [e.state for e in events] == ["queued", "running", "running", "succeeded"]
        assert events[1].round_record["contributors"] == ["a", "b"]
        assert events[-1].finished and events[2].round_label == "round 2"
        assert client.result(job_id) == RESULT
        agencies = client.agencies()
        assert [a.name for a in agencies] == ["district-01", "district-02"]
        assert agencies[0].datasets["inspections"].categorical == {"c": ("u", "v")}
        assert not agencies[1].connected
        assert client.cancel(job_id).state == "cancelled"
    assert set(jobs.auth) == {f"Bearer {TOKEN}"}


def test_client_errors(jobs):
    with Client(jobs.address, TOKEN, insecure=True) as client:
        with pytest.raises(ClientError, match="INVALID_ARGUMENT: unknown job type 'bad'") as info:
            client.submit("bad", {}, "inspections")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details == "unknown job type 'bad'"
        with pytest.raises(ClientError, match="NOT_FOUND") as info:
            client.result("job-404")
        assert info.value.code_name == "NOT_FOUND"
        with pytest.raises(ClientError, match=r"failed .*too few agencies"):
            client.result("job-failed")
        with pytest.raises(ClientError, match="job job-1 does not record its columns"):
            client.estimator("job-1", None)  # the fake's result is no fedcity result
        with pytest.raises(ValueError, match="JSON-serialisable"):
            client.submit("ridge", {"alpha": float("nan")}, "inspections")
    with Client(jobs.address, "wrong", insecure=True) as client:
        with pytest.raises(ClientError, match="refused the token") as info:
            client.agencies()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ClientError, match="only to a loopback"):
        Client("10.0.0.1:50051", TOKEN, insecure=True)


def test_cli_job_flow(jobs, token_file, tmp_path, capsys):
    connect = ["--coordinator", jobs.address, "--insecure", "--token-file", str(token_file)]
    submit = ["job", "submit", *connect, "--type", "ridge", "--dataset", "inspections"]
    assert main([*submit, "--params", '{"alpha": 2}', "--watch"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["job-1", "job job-1 succeeded after 2 rounds"]
    assert json.loads(jobs.submitted[0].params_json) == {"alpha": 2}
    assert main(["job", "watch", "job-x", *connect]) == 1  # the job failed
    assert "job job-x failed after 2 rounds" in capsys.readouterr().out
    result = tmp_path / "result.json"
    assert main(["job", "result", "job-1", *connect, "--out", str(result)]) == 0
    assert json.loads(result.read_text()) == RESULT
    assert main(["job", "result", "job-1", *connect, "--out", str(result)]) == 1
    assert "exists; use --force" in capsys.readouterr().err
    assert main(["job", "result", "job-1", *connect]) == 0
    assert json.loads(capsys.readouterr().out) == RESULT
    assert main(["agencies", "list", *connect, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["datasets"]["inspections"]["label"] == "y"
    assert main(["agencies", "list", *connect]) == 0
    assert "district-02" in capsys.readouterr().out
    assert main(["job", "cancel", "job-1", *connect]) == 0
    assert capsys.readouterr().out.strip() == "job job-1 cancelled"
    assert main(["job", "result", "job-404", *connect]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NOT_FOUND: no job 'job-404'" in err[0]


def test_environment_supplies_the_connection(jobs, token_file, capsys, monkeypatch):
    monkeypatch.setenv("FEDCITY_COORDINATOR", jobs.address)
    monkeypatch.setenv("FEDCITY_TOKEN_FILE", str(token_file))
    assert main(["agencies", "list", "--insecure", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


# -- end to end: ceremony, the real coordinator, agents (one as `fedcity agent run`), client -----
def _agency_toml(folder, agency, port):
    (folder / "agency.toml").write_text(
        f"""agency = "{agency}"
coordinator = "127.0.0.1:{port}"
token_file = "token"
share_file = "share.json"
signing_key_file = "signing-key.json"
federation_file = "../../federation-public.json"
ca_file = "../../tls/ca.pem"
log_file = "served.jsonl"

[datasets.risk]
path = "risk.csv"
numeric = ["x1", "x2"]
categorical = {{ c = ["u", "v", "w"] }}
label = "y"
"""
    )
    return folder / "agency.toml"


def test_end_to_end_with_the_coordinator(tmp_path, capsys):
    coordinator = pytest.importorskip("fedcity.net.coordinator")
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from fedcity.data import FederatedPreprocessor
    from fedcity.data.dataset import FeatureSpec
    from fedcity.net.agent import Agent, AgentConfig
    from fedcity.net.ceremony import deal_federation, read_token

    agencies = ["d1", "d2", "d3"]
    files = deal_federation(tmp_path, agencies, 2, key_bits=512)
    server = coordinator.serve(
        coordinator.CoordinatorConfig(
            listen="127.0.0.1:0",
            db=tmp_path / "coordinator.sqlite",
            federation=files.public,
            credentials=files.credentials,
            tls_cert=files.server_cert,
            tls_key=files.server_key,
            heartbeat_interval=0.5,
            collect_timeout=60,
            decrypt_timeout=60,
            max_wait=1.0,
            tick_interval=0.1,
        )
    )
    rng = np.random.default_rng(0)
    frames, configs = [], []
    for i, agency in enumerate(agencies):
        n = (60, 150, 300)[i]
        frame = pd.DataFrame(
            {"x1": rng.normal(i, 1, n), "x2": rng.normal(0, 2, n), "c": rng.choice(["u", "v"], n)}
        )
        logit = 0.8 * frame.x1 - 0.5 * frame.x2 + (frame.c == "u") - 0.5
        frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
        frames.append(frame)
        folder = files.shares[agency].parent
        frame.to_csv(folder / "risk.csv", index=False)
        configs.append(_agency_toml(folder, agency, server.port))
    process = subprocess.Popen(
        [sys.executable, "-m", "fedcity.cli", "agent", "run", "--config", str(configs[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    agents = [Agent(AgentConfig.from_toml(c), fetch_wait_ms=1000) for c in configs[1:]]
    threads = [
        threading.Thread(target=a.run, kwargs={"handle_signals": False}, daemon=True)
        for a in agents
    ]
    for t in threads:
        t.start()
    address = f"127.0.0.1:{server.port}"
    try:
        with Client(
            address, read_token(files.scientist_tokens["analyst"]), ca_file=files.ca_cert
        ) as client:
            deadline = time.monotonic() + 45
            while sum(a.connected for a in client.agencies()) < 3:
                assert time.monotonic() < deadline, "agents did not connect"
                assert process.poll() is None, process.communicate()
                time.sleep(0.1)
            token = str(files.scientist_tokens["analyst"])
            connect = ["--coordinator", address, "--ca-file", str(files.ca_cert)]
            job = ["--type", "logistic_regression", "--dataset", "risk", "--params", '{"C": 1}']
            assert main(["job", "submit", *connect, "--token-file", token, *job, "--watch"]) == 0
            job_id = capsys.readouterr().out.splitlines()[0]
            result = client.result(job_id)
            assert len(result["history"]) >= 4
            spec = FeatureSpec(numeric=("x1", "x2"), categorical={"c": ("u", "v", "w")}, label="y")
            federated = client.estimator(job_id, spec)
        pooled = pd.concat(frames, ignore_index=True)
        reference = make_pipeline(
            FederatedPreprocessor(numeric=("x1", "x2"), categorical={"c": ("u", "v", "w")}),
            LogisticRegression(C=1.0, tol=1e-10, max_iter=1000),
        ).fit(pooled, pooled.y)
        np.testing.assert_allclose(
            federated.predict_proba(pooled), reference.predict_proba(pooled), atol=1e-6
        )
        served = [
            json.loads(line)
            for line in (files.shares["d1"].parent / "served.jsonl").read_text().splitlines()
        ]
        assert {e["action"] for e in served} == {"contribute", "partial_decrypt"}
        assert all(e["job"] == job_id and e["outcome"] == "uploaded" for e in served)
        checked = [e["contributions"] for e in served if e["action"] == "partial_decrypt"]
        assert checked and all(sorted(c) == agencies for c in checked)  # verified first
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
        for a in agents:
            a.stop()
        for t in threads:
            t.join(timeout=10)
        server.stop(grace=1.0)
    assert process.returncode == 0, stderr
    assert "received SIGTERM; stopping" in stderr and "agent d1 stopped" in stderr
    assert "Traceback" not in stderr
