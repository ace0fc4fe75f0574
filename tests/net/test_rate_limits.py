"""Per-caller rate limits: the sans-IO token buckets, then a real coordinator on loopback."""

from __future__ import annotations

import grpc
import pytest
from loopback import AGENCIES, Code, auth, channel, refused, snapshot

from fedcity.net.coordinator import CoordinatorConfig, ManualClock, serve
from fedcity.net.coordinator.limits import (
    DEFAULT_RATES,
    RATE_CLASSES,
    RateLimited,
    RateLimiter,
    parse_rate,
    peer_address,
)
from fedcity.net.coordinator.server import _parser
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc


# -- the limiter alone ------------------------------------------------------------------------
def test_a_bucket_admits_its_burst_then_refuses_naming_limit_and_retry_time():
    clock = ManualClock()
    limiter = RateLimiter({"call": (4.0, 3)}, clock=clock)
    for _ in range(3):
        limiter.admit("analyst", "call", "GetStatus")
    with pytest.raises(RateLimited) as info:
        limiter.admit("analyst", "call", "GetStatus")
    exc = info.value
    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert exc.retry_after == pytest.approx(0.25)
    for part in ("analyst", "4 call calls per second", "bursts of 3", "--rate-limit call=4/3"):
        assert part in exc.message, exc.message
    assert "GetStatus refused, retry in 0.25 s" in exc.message
    assert limiter.refused["call"] == 1


def test_limits_reset_over_time():
    clock = ManualClock()
    limiter = RateLimiter({"submit": (0.5, 2)}, clock=clock)
    limiter.admit("analyst", "submit")
    limiter.admit("analyst", "submit")
    with pytest.raises(RateLimited) as info:
        limiter.admit("analyst", "submit")
    assert info.value.retry_after == pytest.approx(2.0)
    clock.advance(1.9)
    with pytest.raises(RateLimited) as info:  # not yet a whole token
        limiter.admit("analyst", "submit")
    assert info.value.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    limiter.admit("analyst", "submit")  # exactly one token back
    clock.advance(1000)  # a long pause refills to the burst, not beyond
    limiter.admit("analyst", "submit")
    limiter.admit("analyst", "submit")
    with pytest.raises(RateLimited):
        limiter.admit("analyst", "submit")


def test_buckets_are_per_caller_and_per_class():
    clock = ManualClock()
    limiter = RateLimiter({"call": (1.0, 1), "heartbeat": (1.0, 1)}, clock=clock)
    limiter.admit("district-01", "call")
    with pytest.raises(RateLimited):
        limiter.admit("district-01", "call")
    limiter.admit("district-01", "heartbeat")  # its own heartbeats have their own bucket
    limiter.admit("district-02", "call")  # and nobody else is affected
    limiter.admit("district-02", "heartbeat")


def test_idle_buckets_are_forgotten_past_the_cap():
    clock = ManualClock()
    limiter = RateLimiter({"anonymous": (1.0, 2)}, clock=clock, max_callers=10)
    for i in range(10):
        limiter.admit(f"peer 10.0.0.{i}", "anonymous")
    assert limiter.callers == 10
    clock.advance(5)  # all have refilled: indistinguishable from new callers
    limiter.admit("peer 10.0.1.1", "anonymous")
    assert limiter.callers == 1
    for i in range(30):  # none refilled: the oldest go, memory stays bounded
        limiter.admit(f"peer 10.0.2.{i}", "anonymous")
        assert limiter.callers <= 10


def test_every_fedcity_method_has_a_rate_class():
    import fedcity.v1.federation_pb2 as module

    methods = {
        f"/{service.full_name}/{m.name}"
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    unlisted = methods - set(RATE_CLASSES) - {"/fedcity.v1.EnrollmentService/Enroll"}
    assert not unlisted
    assert set(RATE_CLASSES.values()) <= set(DEFAULT_RATES)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("submit=1/20", ("submit", 1.0, 20)),
        ("call=0.5/3", ("call", 0.5, 3)),
        ("call=10", ("call", 10.0, 20)),
    ],
)
def test_rate_option_parses(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    "text, match",
    [
        ("uploads=1/2", "CLASS one of"),
        ("call", "CLASS one of"),
        ("call=x/2", "RATE must be a number"),
        ("call=0/2", "rate must be a positive number"),
        ("call=1/0", "burst must be a whole number"),
        ("call=nan/2", "rate must be a positive number"),
    ],
)
def test_bad_rate_options_are_refused_naming_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        parse_rate(text)


def test_serve_flag_and_config(files, capsys):
    args = _parser().parse_args(
        ["--db", "x", "--federation", "f", "--rate-limit", "submit=1/5", "--rate-limit", "call=9/9"]
    )
    assert args.rate_limit == [("submit", 1.0, 5), ("call", 9.0, 9)]
    with pytest.raises(SystemExit):
        _parser().parse_args(["--db", "x", "--federation", "f", "--rate-limit", "bogus=1/1"])
    assert "bogus" in capsys.readouterr().err
    with pytest.raises(ValueError, match="burst"):
        CoordinatorConfig(rate_limits={"call": (1.0, 0)})


def test_peer_addresses_lose_their_port():
    assert peer_address("ipv4:10.1.2.3:50123") == "10.1.2.3"
    assert peer_address("ipv6:[::1]:50123") == "::1"
    assert peer_address("ipv6:%5B::1%5D:50123") == "::1"
    assert peer_address("unix:/run/x.sock") == "unix:/run/x.sock"


# -- a real coordinator -----------------------------------------------------------------------
def start(files, *, rate_clock, **overrides):
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        db=files["db"],
        federation=files["federation"],
        credentials=files["credentials"],
        insecure=True,
        **overrides,
    )
    return serve(config, rate_clock=rate_clock)


def _heartbeat(stub, name: str):
    return stub.Heartbeat(fpb.HeartbeatRequest(agency=name), metadata=auth(name), timeout=10)


def test_one_agency_hammering_cannot_starve_anothers_heartbeats(files, servers):
    clock = ManualClock()  # frozen: no token comes back during the test
    server = start(files, rate_clock=clock, rate_limits={"heartbeat": (1.0, 5), "call": (1.0, 10)})
    servers.append(server)
    stub = fpb_grpc.AgentServiceStub(channel(server.port))
    noisy, quiet = AGENCIES[0], AGENCIES[1]
    admitted = exhausted = 0
    for _ in range(40):  # heartbeats and polls in a loop
        for call in (
            lambda: _heartbeat(stub, noisy),
            lambda: stub.FetchWork(
                fpb.FetchWorkRequest(agency=noisy), metadata=auth(noisy), timeout=10
            ),
        ):
            try:
                call()
                admitted += 1
            except grpc.RpcError as exc:
                assert exc.code() == Code.RESOURCE_EXHAUSTED, exc.details()
                exhausted += 1
    assert admitted == 5 + 10 and exhausted == 80 - 15
    for _ in range(5):  # the other agency's whole burst is still there
        assert _heartbeat(stub, quiet).heartbeat_interval_ms > 0
    assert server.rate_limiter.refused["heartbeat"] == 40 - 5
    text = server.metrics.registry.get_sample_value(
        "fedcity_rate_limited_total", {"rate_class": "heartbeat"}
    )
    assert text == 35


def test_the_refusal_is_precise_and_the_limit_resets(files, servers):
    clock = ManualClock()
    server = start(files, rate_clock=clock, rate_limits={"call": (2.0, 2)})
    servers.append(server)
    jobs = fpb_grpc.JobServiceStub(channel(server.port))

    def status():
        return jobs.ListJobs(fpb.ListJobsRequest(), metadata=auth("analyst"), timeout=10)

    status()
    status()
    with pytest.raises(grpc.RpcError) as info:
        status()
    err = info.value
    assert err.code() == Code.RESOURCE_EXHAUSTED
    details = err.details()
    assert "rate limit: analyst made more than 2 call calls per second" in details
    assert "--rate-limit call=2/2" in details and "ListJobs refused, retry in 0.50 s" in details
    assert dict(err.trailing_metadata())["retry-after-ms"] == "500"
    clock.advance(0.5)
    status()  # one token back
    refused(Code.RESOURCE_EXHAUSTED, status, match="retry in 0.50 s")
    clock.advance(60)
    status()
    status()


def test_refused_uploads_and_submissions_change_nothing(files, servers):
    clock = ManualClock()
    server = start(files, rate_clock=clock, rate_limits={"submit": (1.0, 1), "transfer": (1.0, 1)})
    servers.append(server)
    port = server.port
    jobs = fpb_grpc.JobServiceStub(channel(port))
    spec = fpb.JobSpec(job_type="logistic_regression", params_json="{}", dataset="nowhere")
    with pytest.raises(grpc.RpcError) as info:  # admitted, refused on its merits
        jobs.SubmitJob(spec, metadata=auth("analyst"), timeout=10)
    assert info.value.code() != Code.RESOURCE_EXHAUSTED
    before = snapshot(files["db"])
    refused(
        Code.RESOURCE_EXHAUSTED,
        lambda: jobs.SubmitJob(spec, metadata=auth("analyst"), timeout=10),
        match="submit calls per second",
    )
    agents = fpb_grpc.AgentServiceStub(channel(port))
    chunk = fpb.Chunk(header=fpb.ChunkHeader(job_id="0" * 12, agency=AGENCIES[0], kind=1))
    with pytest.raises(grpc.RpcError) as info:
        agents.Upload(iter([chunk]), metadata=auth(AGENCIES[0]), timeout=10)
    assert info.value.code() == Code.FAILED_PRECONDITION  # no such job
    refused(
        Code.RESOURCE_EXHAUSTED,
        lambda: agents.Upload(iter([chunk]), metadata=auth(AGENCIES[0]), timeout=10),
        match="transfer calls per second",
    )
    assert snapshot(files["db"]) == before


def test_calls_without_credentials_are_limited_per_peer_address(files, servers):
    clock = ManualClock()
    server = start(files, rate_clock=clock, rate_limits={"anonymous": (1.0, 3)})
    servers.append(server)
    stub = fpb_grpc.AgentServiceStub(channel(server.port))
    bad = (("authorization", "Bearer not-a-token"),)

    def anonymous():
        return stub.Heartbeat(fpb.HeartbeatRequest(agency=AGENCIES[0]), metadata=bad, timeout=10)

    for _ in range(3):
        refused(Code.UNAUTHENTICATED, anonymous)
    details = refused(Code.RESOURCE_EXHAUSTED, anonymous, match="anonymous calls per second")
    assert "peer 127.0.0.1" in details
    # a fresh connection from the same address shares the bucket ...
    other = fpb_grpc.AgentServiceStub(channel(server.port))
    refused(
        Code.RESOURCE_EXHAUSTED,
        lambda: other.Heartbeat(fpb.HeartbeatRequest(agency="x"), timeout=10),
    )
    # ... and the agencies themselves, from that very address, are not affected
    for name in AGENCIES:
        assert _heartbeat(stub, name).heartbeat_interval_ms > 0
    clock.advance(1.0)
    refused(Code.UNAUTHENTICATED, anonymous)


def test_the_agent_waits_at_least_what_the_refusal_says(files, servers):
    from fedcity.net.agent import _retry_after

    clock = ManualClock()
    server = start(files, rate_clock=clock, rate_limits={"heartbeat": (0.25, 1)})
    servers.append(server)
    stub = fpb_grpc.AgentServiceStub(channel(server.port))
    _heartbeat(stub, AGENCIES[0])
    with pytest.raises(grpc.RpcError) as info:
        _heartbeat(stub, AGENCIES[0])
    assert _retry_after(info.value) == pytest.approx(4.0)  # one token per 4 s
    with pytest.raises(grpc.RpcError) as other:  # any other refusal: no hint
        stub.Heartbeat(fpb.HeartbeatRequest(agency="x"), metadata=auth(AGENCIES[1]), timeout=5)
    assert other.value.code() == Code.PERMISSION_DENIED
    assert _retry_after(other.value) == 0.0
