"""Run a query in process: agencies, coordinator and algorithm in one Python process.

:class:`QueryFederation` deals a threshold key to the agencies (or reuses one), wraps each
:class:`~fedcity.analytics.local.LocalTable` in an :class:`~fedcity.core.nodes.AgencyNode`, and
drives :class:`~fedcity.analytics.query.QueryAlgorithm` through the same
:class:`~fedcity.learn.driver.JobDriver` the networked coordinator uses: every contribution is
sealed (packed Paillier) by its agency, the coordinator only adds ciphertexts, and a round is
released only through ``t`` verified partial decryptions. :func:`run_query` is the one-call
form.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedcity.analytics.local import LocalTable
from fedcity.analytics.query import DEFAULT_BINS, MAX_AGENCIES, QueryJob
from fedcity.analytics.result import QueryResult
from fedcity.analytics.spec import QueryError, QuerySpec
from fedcity.core.aggregation import AggregationScheme, PaillierScheme, PlaintextScheme
from fedcity.core.errors import JobFailed, RejectedContribution
from fedcity.core.nodes import AgencyNode
from fedcity.core.rounds import AggregationRound
from fedcity.crypto import KeyShare, ThresholdPublicKey, deal_threshold_key
from fedcity.learn.algorithm import RoundRecord
from fedcity.learn.driver import JobDriver

__all__ = ["QueryFederation", "run_query"]


class QueryFederation:
    """Agencies holding query tables and an in-process coordinator.

    Parameters
    ----------
    tables : sequence of LocalTable
        One per agency (``table.agency`` names it; names must be unique and the schemas equal).
    threshold : int, optional
        Agencies needed to decrypt (default: a majority).
    min_agencies : int, optional
        Fewest contributors per released aggregate, and fewest agencies per computed cell
        (default: ``threshold``, at least 2 when there are two or more agencies).
    key_bits : int, default 2048
    encrypted : bool, default True
        False runs the same rounds in the clear (a baseline; no privacy).
    key : (ThresholdPublicKey, list of KeyShare), optional
        Reuse a dealt key (share ``i`` goes to agency ``i``).
    """

    def __init__(
        self,
        tables: Sequence[LocalTable],
        *,
        threshold: int | None = None,
        min_agencies: int | None = None,
        key_bits: int = 2048,
        encrypted: bool = True,
        key: tuple[ThresholdPublicKey, Sequence[KeyShare]] | None = None,
    ) -> None:
        tables = list(tables)
        if not tables:
            raise QueryError("a query needs at least one agency's table")
        for t in tables:
            if not isinstance(t, LocalTable):
                raise QueryError(f"tables must be LocalTable objects, got {type(t).__name__}")
        names = [t.agency for t in tables]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise QueryError(f"agency names must be unique; repeated: {dup}")
        if len(tables) > MAX_AGENCIES:
            raise QueryError(f"{len(tables)} agencies exceed the limit of {MAX_AGENCIES}")
        schema = tables[0].schema
        for t in tables[1:]:
            if t.schema != schema:
                raise QueryError(
                    f"agency {t.agency!r} declares table {t.schema.to_dict()}, agency "
                    f"{tables[0].agency!r} declares {schema.to_dict()}; they must be equal"
                )
        self.schema = schema
        parties = len(tables)
        t_ = threshold if threshold is not None else parties // 2 + 1
        if not 1 <= t_ <= parties:
            raise QueryError(f"threshold must lie in [1, {parties}], got {t_}")
        self.threshold = t_
        self.min_agencies = min_agencies if min_agencies is not None else max(t_, min(2, parties))
        if not 1 <= self.min_agencies <= parties:
            raise QueryError(f"min_agencies must lie in [1, {parties}], got {self.min_agencies}")
        self.encrypted = encrypted
        self.key_bits = key_bits
        scheme: AggregationScheme
        shares: list[KeyShare | None]
        if encrypted:
            if key is None:
                key = deal_threshold_key(key_bits, threshold=t_, parties=parties)
            tpk, key_shares = key
            if tpk.parties != parties or tpk.threshold != t_:
                raise QueryError(
                    f"the given key is {tpk.threshold}-of-{tpk.parties}; the federation needs "
                    f"{t_}-of-{parties}"
                )
            self.key_bits = tpk.public_key.n_length
            scheme = PaillierScheme(tpk)
            shares = list(key_shares)
        else:
            scheme = PlaintextScheme()
            shares = [None] * parties
        self.scheme = scheme
        self.agencies: dict[str, AgencyNode] = {
            t.agency: AgencyNode(t.agency, None, scheme, share=s, tables={t.name: t})
            for t, s in zip(tables, shares, strict=True)
        }
        self.share_index_of = {
            name: node.share.index
            for name, node in self.agencies.items()
            if isinstance(node.share, KeyShare)
        }
        self.drivers: dict[str, JobDriver] = {}

    def run(
        self,
        spec: QuerySpec | Mapping[str, Any] | str | Path,
        *,
        bins: int | None = None,
        progress: Callable[[RoundRecord], None] | None = None,
    ) -> QueryResult:
        """Run one query; returns its released result.

        Raises
        ------
        QueryError
            The spec is invalid or does not fit the agencies' schema (before any agency works).
        JobFailed
            An agency refused or failed, or too few agencies remain.
        """
        if isinstance(spec, QuerySpec):
            parsed = spec
        elif isinstance(spec, Mapping):
            parsed = QuerySpec.from_dict(spec)
        else:
            parsed = QuerySpec.from_toml(spec)
        job = QueryJob(parsed, schema=self.schema, bins=bins or DEFAULT_BINS)
        algorithm = job.algorithm(self.min_agencies)
        job_id = uuid.uuid4().hex[:12]
        start = time.perf_counter()
        driver = JobDriver(
            job_id,
            algorithm,
            self.scheme,
            agencies=list(self.agencies),
            min_agencies=self.min_agencies,
            share_index_of=self.share_index_of,
            n_length=self.key_bits if self.encrypted else 2048,
        )
        self.drivers[job_id] = driver
        seen = 0
        task = driver.start()
        while task is not None:
            for name in driver.awaiting_contributions():
                node = self.agencies[name]
                before = (node.timings.local_training, node.timings.encryption)
                try:
                    payload = node.contribute(task)
                except RejectedContribution as exc:
                    raise JobFailed(str(exc)) from exc
                except ValueError as exc:
                    raise JobFailed(
                        f"agency {name!r} could not run {task.request.kind}: {exc}"
                    ) from exc
                driver.add_seconds("local_query", node.timings.local_training - before[0])
                driver.add_seconds("encryption", node.timings.encryption - before[1])
                driver.submit_contribution(name, payload)
            aggregate = driver.close_collection()
            if driver.task is task:
                for name in driver.decryption_candidates():
                    if driver.task is not task:
                        break
                    node = self.agencies[name]
                    before_p = node.timings.partial_decryption
                    partial = node.decrypt_share(task, aggregate, summands_min=self.min_agencies)
                    driver.add_seconds(
                        "partial_decryption", node.timings.partial_decryption - before_p
                    )
                    driver.submit_partial(name, partial)
                if driver.task is task:
                    driver.fail_decryption()
            if progress is not None:
                for record in driver.records[seen:]:
                    progress(record)
            seen = len(driver.records)
            task = driver.task
        return job.result(
            algorithm,
            history=driver.records,
            job_id=job_id,
            seconds=time.perf_counter() - start,
        )

    def rounds(self, job_id: str) -> list[AggregationRound]:
        """The coordinator's rounds of a job (what it received and derived)."""
        return list(self.drivers[job_id].rounds)

    def coordinator_storage(self, job_id: str) -> Iterator[bytes]:
        """Every byte string the coordinator received or derived for a job.

        With encryption on, all of it is ciphertext.
        """
        for rnd in self.drivers[job_id].rounds:
            yield from rnd.contributions.values()
            yield from rnd.partials.values()
            if rnd.aggregate_bytes is not None:
                yield rnd.aggregate_bytes


def run_query(
    spec: QuerySpec | Mapping[str, Any] | str | Path,
    tables: Sequence[LocalTable],
    *,
    key: tuple[ThresholdPublicKey, Sequence[KeyShare]] | None = None,
    key_bits: int = 2048,
    threshold: int | None = None,
    min_agencies: int | None = None,
    encrypted: bool = True,
    bins: int | None = None,
    progress: Callable[[RoundRecord], None] | None = None,
) -> QueryResult:
    """Run a query over agencies' tables in process, with real threshold encryption.

    Parameters
    ----------
    spec : QuerySpec, mapping, or path to a TOML file
    tables : sequence of LocalTable
        One per agency.
    key, key_bits, threshold, min_agencies, encrypted
        See :class:`QueryFederation`.
    bins : int, optional
        Bins per quantile refinement round (default 32).
    progress : callable, optional
        Called with each round's :class:`~fedcity.learn.algorithm.RoundRecord`.

    Returns
    -------
    QueryResult
        ``.frame`` (one row per cell), ``.history`` (seconds and bytes per round).
    """
    federation = QueryFederation(
        tables,
        threshold=threshold,
        min_agencies=min_agencies,
        key_bits=key_bits,
        encrypted=encrypted,
        key=key,
    )
    return federation.run(spec, bins=bins, progress=progress)
