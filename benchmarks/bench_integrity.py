#!/usr/bin/env python
"""What contribution integrity costs: signatures and the decryptor-side aggregate check.

Workload: the packed FedAvg contributions of ``bench_network.py``'s two model sizes, an
``MLPClassifier`` with 1,021 and 9,997 parameters (hidden layers of 20 and 196 units over 49
features). A ``fedavg.local`` round asks for the parameters plus 3 slots, the coordinator
adds the overflow slot, and for 10 agencies it packs them with clip 64, 40-bit precision and
10 summands under a 2048-bit key: 1,025 and 10,001 values. Ten agencies each encrypt one
contribution; the coordinator's aggregate is their product. Measured in this one run:

- **sign**: an agency signs an upload (``sign_upload``: SHA-256 of the payload and an Ed25519
  signature of the statement);
- **verify at the coordinator**: ``check_upload`` on the upload's header (one Ed25519
  verification; the payload's SHA-256 is computed by ``assemble`` in any case, shown apart);
- **decryptor-side check** per round and decryptor: fetching the round's evidence (10
  signed contributions) over loopback gRPC from a real ``FetchContributions`` stream,
  parsing it, verifying the 10 signatures, and recomputing the product of the 10
  contributions (parsing and validating every ciphertext, then multiplying mod n²) to compare
  with the aggregate (:class:`~fedcity.core.integrity.ContributionVerifier`);
- **partial decryption** of the same aggregate with a 3-of-10 threshold share and its proof
  (what the check precedes), and, for the single-key-holder mode, the key holder's
  decryption of the blinded aggregate next to its check (signatures and count only).

The check is printed as a ratio against the partial decryption. Every figure is the median
of ``--repeats`` runs (the decryptions: of ``--decrypt-repeats``), one process, no worker
pool (an agent's default ``crypto_workers = 1``).

Examples
--------
    python benchmarks/bench_integrity.py                  # 2048-bit, ~3 min
    python benchmarks/bench_integrity.py --quick          # 1024-bit smoke run
    python benchmarks/bench_integrity.py --out /tmp/integrity.md
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from _common import CpuMonitor, describe_machine, markdown

import fedcity.learn  # noqa: F401  (registers the vetted steps, fedavg.local among them)
from fedcity.core.aggregation import KeyHolderScheme, PaillierScheme
from fedcity.core.integrity import ContributionVerifier, Evidence, SignedContribution
from fedcity.core.tasks import Task, TaskRequest
from fedcity.crypto import (
    PackingSpec,
    blind_vector,
    deal_threshold_key,
    generate_keypair,
    keyholder_decrypt,
    partial_decrypt,
    serde,
)
from fedcity.crypto.signing import SigningKey
from fedcity.net.ceremony import Federation
from fedcity.net.integrity import (
    check_upload,
    evidence_bound,
    evidence_from_bytes,
    evidence_to_bytes,
    sign_upload,
)
from fedcity.net.messages import MAX_MESSAGE_BYTES, assemble, chunks
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

AGENCIES, THRESHOLD, FEATURES = 10, 3, 49
HIDDEN = {"1,021 parameters": 20, "9,997 parameters": 196}
JOB, ROUND = "0123456789ab", 7
MONITOR = CpuMonitor()


def mlp_params(hidden: int, d: int = FEATURES) -> int:
    return (d + 1) * hidden + hidden + 1


def fedavg_task(n_params: int, n_length: int) -> Task:
    """The ``fedavg.local`` round's task as the coordinator builds it for 10 agencies."""
    request = TaskRequest("fedavg.local", {}, n_params + 3, clip=64.0, precision_bits=40)
    spec = PackingSpec(clip=64.0, precision_bits=40, max_summands=AGENCIES, n_length=n_length)
    return Task(JOB, ROUND, request, spec)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class EvidenceServer(fpb_grpc.AgentServiceServicer):
    """Serves one evidence payload on ``FetchContributions``, as the coordinator streams it."""

    def __init__(self) -> None:
        self.payload = b""

    def FetchContributions(self, request: Any, context: Any) -> Any:  # noqa: N802
        yield from chunks(
            self.payload,
            job_id=request.job_id,
            round=request.round,
            agency="",
            kind=fpb.PAYLOAD_KIND_EVIDENCE,
        )


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--decrypt-repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1024-bit key, fewer repeats")
    p.add_argument("--out", help="also write the markdown report to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.key_bits, args.repeats, args.decrypt_repeats = 1024, 5, 1
    command = "python benchmarks/bench_integrity.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    import cryptography

    machine = describe_machine({"cryptography": cryptography.__version__})
    print("machine:", machine, flush=True)
    start_load = MONITOR.snapshot()

    t0 = time.perf_counter()
    tpk, shares = deal_threshold_key(args.key_bits, threshold=THRESHOLD, parties=AGENCIES)
    pk, sk = generate_keypair(args.key_bits)
    print(f"keys: {args.key_bits}-bit in {time.perf_counter() - t0:.1f} s", flush=True)
    names = [f"agency-{i + 1:02d}" for i in range(AGENCIES)]
    signing = {a: SigningKey.generate() for a in names}
    public = {a: k.public_key for a, k in signing.items()}
    federation = Federation(
        tpk.public_key,
        {a: i + 1 for i, a in enumerate(names)},
        threshold_key=tpk,
        signing_keys=public,
    )
    scheme = PaillierScheme(tpk)
    kh_scheme = KeyHolderScheme(pk)
    verifier = ContributionVerifier(public, tpk.key_id)
    kh_verifier = ContributionVerifier(public, pk.key_id)

    servicer = EvidenceServer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    fpb_grpc.add_AgentServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
    )
    stub = fpb_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]

    rows = []
    details = []
    rng = np.random.default_rng(0)
    try:
        for title, hidden in HIDDEN.items():
            n_params = mlp_params(hidden)
            task = fedavg_task(n_params, args.key_bits)
            print(f"== {title}: encrypting {AGENCIES} contributions ...", flush=True)
            payloads = {
                a: scheme.seal(rng.uniform(-1, 1, task.vector_length), task.spec) for a in names
            }
            kh_payloads = {
                a: kh_scheme.seal(rng.uniform(-1, 1, task.vector_length), task.spec) for a in names
            }
            aggregate = scheme.add(
                [scheme.open(p, task.spec, task.vector_length) for p in payloads.values()]
            )
            aggregate_bytes = scheme.aggregate_to_bytes(aggregate)
            first = names[0]
            payload = payloads[first]

            def sign(payload: bytes = payload, agency: str = first) -> bytes:
                return sign_upload(
                    signing[agency],
                    payload,
                    job_id=JOB,
                    round=ROUND,
                    kind=fpb.PAYLOAD_KIND_CONTRIBUTION,
                    agency=agency,
                    key_id=tpk.key_id,
                )

            header = fpb.ChunkHeader(
                job_id=JOB,
                round=ROUND,
                agency=first,
                kind=fpb.PAYLOAD_KIND_CONTRIBUTION,
                total_bytes=len(payload),
                sha256=hashlib.sha256(payload).digest(),
                signature=sign(),
            )
            t_sign = median_time(sign, args.repeats)
            t_verify = median_time(lambda h=header, a=first: check_upload(federation, h, a), 200)
            t_sha = median_time(lambda p=payload: hashlib.sha256(p).digest(), args.repeats)

            entries = tuple(
                SignedContribution(a, sign(p, a), hashlib.sha256(p).digest(), p)
                for a, p in payloads.items()
            )
            servicer.payload = evidence_to_bytes(Evidence(JOB, ROUND, entries))
            bound = evidence_bound(len(aggregate_bytes), AGENCIES)
            timings: dict[str, list[float]] = {
                k: [] for k in ("fetch", "parse", "signatures", "product")
            }

            def check(
                record: dict[str, list[float]] = timings,
                ag: Any = aggregate,
                bound: int = bound,
                task: Task = task,
            ) -> None:
                t = time.perf_counter()
                stream = stub.FetchContributions(
                    fpb.AggregateRef(job_id=JOB, round=ROUND), timeout=60
                )
                _, data = assemble(stream, max_bytes=bound)
                t1 = time.perf_counter()
                evidence = evidence_from_bytes(data, max_contributions=AGENCIES)
                t2 = time.perf_counter()
                for c in evidence.contributions:  # the verifier's step 3 alone, for the split
                    verifier._check_signature(task, c, "bench")
                t3 = time.perf_counter()
                verifier.check(scheme, task, ag, evidence, summands_min=AGENCIES)
                t4 = time.perf_counter()
                record["fetch"].append(t1 - t)
                record["parse"].append(t2 - t1)
                record["signatures"].append(t3 - t2)
                # check() verifies the signatures again before the product: subtract them
                record["product"].append(max(t4 - t3 - (t3 - t2), 0.0))

            t_check = median_time(check, args.repeats)
            split = {k: statistics.median(v) for k, v in timings.items()}
            print(f"   check {fmt_ms(t_check)}; partial decryption ...", flush=True)
            t_partial = median_time(
                lambda ag=aggregate: serde.partial_decryption_to_bytes(
                    partial_decrypt(shares[0], ag), tpk.public_key
                ),
                args.decrypt_repeats,
            )

            # single key holder: digests and signatures only, then the CRT decryption
            kh_total = kh_scheme._sum(
                [kh_scheme.open(p, task.spec, task.vector_length) for p in kh_payloads.values()]
            )
            blinded = blind_vector(kh_total, bytes(32)).blinded
            kh_entries = tuple(
                SignedContribution(
                    a,
                    sign_upload(
                        signing[a],
                        p,
                        job_id=JOB,
                        round=ROUND,
                        kind=fpb.PAYLOAD_KIND_CONTRIBUTION,
                        agency=a,
                        key_id=pk.key_id,
                    ),
                    hashlib.sha256(p).digest(),
                    None,
                )
                for a, p in kh_payloads.items()
            )
            kh_evidence = evidence_to_bytes(Evidence(JOB, ROUND, kh_entries))

            def kh_check(data: bytes = kh_evidence, bl: Any = blinded, task: Task = task) -> None:
                evidence = evidence_from_bytes(data, max_contributions=AGENCIES)
                kh_verifier.check(kh_scheme, task, bl, evidence, summands_min=AGENCIES)

            t_kh_check = median_time(kh_check, args.repeats)
            t_kh_decrypt = median_time(
                lambda bl=blinded: keyholder_decrypt(sk, bl), args.decrypt_repeats
            )
            n_ct = len(aggregate.ciphertexts)
            rows.append(
                [
                    title,
                    f"{task.vector_length:,} / {n_ct}",
                    f"{len(payload) / 1024:,.0f} KiB",
                    fmt_ms(t_sign),
                    fmt_ms(t_verify),
                    fmt_ms(t_check),
                    fmt_ms(t_partial),
                    f"{t_check / t_partial:.3f}",
                    f"{fmt_ms(t_kh_check)} / {fmt_ms(t_kh_decrypt)} = "
                    f"{t_kh_check / t_kh_decrypt:.4f}",
                ]
            )
            details.append(
                [
                    title,
                    fmt_ms(t_sha),
                    fmt_ms(split["fetch"]),
                    fmt_ms(split["parse"]),
                    fmt_ms(split["signatures"]),
                    fmt_ms(split["product"]),
                    f"{len(servicer.payload) / 1024:,.0f} KiB",
                ]
            )
    finally:
        channel.close()
        server.stop(0)
    load = MONITOR.since(start_load)

    text = (
        f"Command: `{command.strip()}`  \n"
        f"Machine: {', '.join(f'{k} {v}' for k, v in machine.items())}  \n"
        f"{args.key_bits}-bit key, {AGENCIES} agencies, {THRESHOLD}-of-{AGENCIES} threshold "
        f"shares; medians of {args.repeats} runs ({args.decrypt_repeats} for decryptions); "
        f"other processes used {'n/a' if load is None else f'{load:.2f}'} cores on average.\n\n"
        + markdown(
            [
                "model",
                "values / ciphertexts",
                "upload",
                "sign (agency)",
                "verify (coordinator)",
                "decryptor check",
                "partial decryption",
                "check ÷ partial",
                "key holder: check / decryption",
            ],
            rows,
        )
        + "\n\nDecryptor check, split (per round and decryptor), and the payload's SHA-256 "
        "that `assemble` computes with or without signatures:\n\n"
        + markdown(
            [
                "model",
                "SHA-256 of one upload",
                "fetch (gRPC loopback)",
                "parse evidence",
                "10 signatures",
                "recompute product",
                "evidence size",
            ],
            details,
        )
    )
    print("\n" + text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
