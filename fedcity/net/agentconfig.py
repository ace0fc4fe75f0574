"""The agent's configuration file (TOML): what it connects to and what it offers.

Configuration (TOML; relative paths are relative to the file)::

    agency = "district-01"
    coordinator = "127.0.0.1:50051"
    token_file = "agencies/district-01/token"
    key_file = "agencies/district-01/share.json"   # its threshold share; in a key-holder
                                         # federation private-key.json or public-key.json
    signing_key_file = "agencies/district-01/signing-key.json"   # signs every upload
    federation_file = "federation-public.json"   # every agency's public signing key
    ca_file = "tls/ca.pem"               # required unless insecure = true
    insecure = false                     # plaintext, only to a loopback coordinator
    log_file = "agent-district-01.log"   # optional: one JSON line per task served
    audit_file = "district-01.audit.sqlite"    # signed audit log (this is the default)
    ledger_file = "district-01.ledger.sqlite"  # privacy-budget ledger (this is the default)
    crypto_workers = 1                   # worker processes for encryption and decryption
    randomness_pool = 4096               # most encryption randomness pairs precomputed while
                                         # idle (0: off; ~0.8 KiB each at 2048 bits)

    [datasets.inspections]
    path = "data/district-01.csv"        # .csv, .parquet or .pq
    numeric = ["pastFail", "timeSinceLast"]
    categorical = { inspector = ["blue", "green"] }
    label = "critical_found"
    weight = ""                          # optional; "" means none

    [policy]
    allowed_kinds = ["stats.counts", "stats.mean", "stats.variance", "glm.newton"]
    min_summands = 2                     # never decrypt an aggregate of fewer contributions
    min_cell_count = 10                  # refuse queries that would release smaller cells
    allowed_scientists = ["analyst"]     # optional: only their jobs (default: anyone's)
    require_dp = false                   # true: every job and query must use DP
    max_epsilon = 4.0                    # optional bounds on a job's declared budget
    max_delta = 1e-5
    approval = ["fedavg"]                # job types a person approves (true: all):
                                         #   fedcity agent pending | approve JOB | deny JOB
    min_set_difference = 2               # refuse jobs on one dataset whose agencies differ
                                         #   by only 1 (differencing)
    budget = { epsilon = 8.0, delta = 1e-5, period = "month" }   # optional: per dataset and
                                         # period (day, week, month, year, total)

    [tables.inspections]                 # optional: a table for federated queries
    path = "data/district-01.csv"        # .csv, .parquet or .pq
    columns = { ward = "category", critical = "integer", inspection_date = "date" }

At least one ``[datasets.<name>]`` or ``[tables.<name>]`` table is required.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcity.core.tasks import LOCAL_STEPS
from fedcity.data.dataset import FeatureSpec
from fedcity.governance.ledger import Budget, LedgerError
from fedcity.governance.policy import AgencyPolicy, PolicyError
from fedcity.net.channel import AddressError, is_loopback, parse_address

__all__ = [
    "DEFAULT_RANDOMNESS_POOL",
    "MAX_CRYPTO_WORKERS",
    "MAX_RANDOMNESS_POOL",
    "AgentConfig",
    "ConfigError",
    "DatasetConfig",
    "TableConfig",
]

MAX_CRYPTO_WORKERS = 64
"""Most worker processes an agent may start for its cryptography."""
DEFAULT_RANDOMNESS_POOL = 4096
"""Default bound of the agent's precomputed encryption randomness (about 3.2 MiB at 2048 bits)."""
MAX_RANDOMNESS_POOL = 1 << 18
"""Largest ``randomness_pool`` accepted (about 200 MiB at 2048 bits, 280 MiB at 3072)."""

_TOP_KEYS = frozenset(
    {
        "agency",
        "coordinator",
        "token_file",
        "tls_cert_file",
        "tls_key_file",
        "share_file",
        "key_file",
        "signing_key_file",
        "federation_file",
        "ca_file",
        "insecure",
        "log_file",
        "audit_file",
        "ledger_file",
        "approvals_file",
        "crypto_workers",
        "randomness_pool",
        "datasets",
        "tables",
        "policy",
    }
)
_DATASET_KEYS = frozenset({"path", "numeric", "categorical", "label", "weight"})
_TABLE_KEYS = frozenset({"path", "columns"})
_POLICY_KEYS = frozenset({"allowed_kinds", "min_summands", "min_cell_count", "budget"}) | (
    AgencyPolicy.KEYS
)
COLUMN_TYPES = frozenset({"category", "integer", "float", "date", "text"})
"""Column types a query table declares (see :class:`fedcity.analytics.TableSchema`)."""
MAX_TABLE_COLUMNS = 1024
"""Most columns one query table declares."""
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ConfigError(ValueError):
    """An invalid agent configuration file; the message names the file and the key."""


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetConfig:
    """One local table the agency offers.

    Attributes
    ----------
    name : str
        The name jobs use (``JobSpec.dataset``).
    path : Path
        Absolute path of the CSV or Parquet file.
    spec : FeatureSpec
        Its declared columns.
    """

    name: str
    path: Path
    spec: FeatureSpec


@dataclass(frozen=True)
class TableConfig:
    """One local table the agency offers to federated queries.

    Attributes
    ----------
    name : str
        The name queries use (``table = ...`` in a query spec).
    path : Path
        Absolute path of the CSV or Parquet file.
    columns : dict of str to str
        Declared column types: ``category``, ``integer``, ``float``, ``date`` or ``text``.
        Only declared columns can be read by a query.
    """

    name: str
    path: Path
    columns: Mapping[str, str]


@dataclass(frozen=True)
class AgentConfig:
    """A validated agent configuration (see the module docstring for the TOML format).

    Attributes
    ----------
    agency : str
    coordinator : str
        ``host:port``.
    token_file : Path or None
        The bearer token (federations without enrollment); None under mutual TLS.
    tls_cert_file, tls_key_file : Path or None
        The agency's client certificate and key from ``fedcity agent enroll`` (mutual TLS).
    share_file : Path
        The agency's key file (config key ``key_file``, or ``share_file`` as before): a
        threshold key share, or in a key-holder federation the private key (key holder) or
        the public key (everyone else).
    signing_key_file : Path
        The agency's Ed25519 signing key (``signing-key.json`` from the key ceremony).
    federation_file : Path
        ``federation-public.json``: every agency's public signing key, against which the
        contributions of an aggregate are checked before this agency decrypts it.
    ca_file : Path or None
        None only with ``insecure``.
    insecure : bool
    log_file : Path or None
    datasets : dict of str to DatasetConfig
        In file order; the first one serves assignments that name no dataset.
    tables : dict of str to TableConfig
        Tables offered to federated queries.
    allowed_kinds : frozenset of str
        Vetted task kinds this agency runs (default: every vetted kind).
    min_summands : int
        Smallest aggregate this agency helps decrypt, whatever the coordinator asks.
    min_cell_count : int
        Smallest cell (rows) a query over this agency's tables may release; a query asking
        for less is refused (it can raise the federation's minimum, never lower it).
    audit_file : Path or None
        The agency's audit log (:mod:`fedcity.governance.auditlog`); by default
        ``<agency>.audit.sqlite`` beside the configuration file.
    rules : AgencyPolicy
        The job-level rules of ``[policy]`` (:mod:`fedcity.governance.policy`): allowed data
        scientists, required differential privacy and its bounds, approvals, differencing.
    approvals_file : Path or None
        The book of jobs waiting for approval and jobs served (``fedcity agent pending``);
        by default ``<agency>.approvals.sqlite`` beside the configuration file.
    ledger_file : Path or None
        The privacy-budget ledger (:mod:`fedcity.governance.ledger`); by default
        ``<agency>.ledger.sqlite`` beside the configuration file.
    budget : Budget or None
        ``[policy] budget``: the (ε, δ) any one dataset may spend per period (None: no limit).
    crypto_workers : int
        Worker processes for encryption and (partial) decryption while the agent runs
        (1: in the agent's own process). Set it to the cores the agency's machine can spare.
    randomness_pool : int
        Most encryption randomness pairs (:class:`~fedcity.crypto.pool.RandomnessPool`) the
        agent precomputes while idle between rounds, in memory only and each used once; it
        tops up to the ciphertext count of its recent uploads, at most this many. 0 turns it
        off. About 0.8 KiB per pair at 2048 bits.
    source : Path or None
        The TOML file it was read from.
    """

    agency: str
    coordinator: str
    token_file: Path | None
    share_file: Path
    signing_key_file: Path
    federation_file: Path
    ca_file: Path | None
    insecure: bool
    datasets: dict[str, DatasetConfig]
    allowed_kinds: frozenset[str]
    log_file: Path | None = None
    tables: Mapping[str, TableConfig] = field(default_factory=dict)
    min_summands: int = 2
    min_cell_count: int = 10
    crypto_workers: int = 1
    randomness_pool: int = DEFAULT_RANDOMNESS_POOL
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    audit_file: Path | None = None
    ledger_file: Path | None = None
    budget: Budget | None = None
    rules: AgencyPolicy = field(default_factory=AgencyPolicy)
    approvals_file: Path | None = None
    source: Path | None = field(default=None, compare=False)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> AgentConfig:
        """Read and validate an agent configuration file.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        AgentConfig

        Raises
        ------
        ConfigError
            Naming the file and the key at fault.
        """
        file = Path(path)
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from exc
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not UTF-8 text") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML: {exc}") from exc
        return cls.from_dict(data, base=file.parent, source=file)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base: Path, source: Path | None = None
    ) -> AgentConfig:
        """Validate an already parsed configuration; relative paths resolve against ``base``.

        Parameters
        ----------
        data : mapping
            The TOML document as a dict.
        base : Path
            Directory relative paths are relative to.
        source : Path, optional
            Named in error messages.

        Returns
        -------
        AgentConfig

        Raises
        ------
        ConfigError
        """
        where = str(source) if source is not None else "agent config"
        v = _Validator(where, base)
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
        agency = v.name(data, "agency")
        coordinator = v.string(data, "coordinator")
        try:
            host, _ = parse_address(coordinator)
        except AddressError as exc:
            raise ConfigError(f"{where}: key 'coordinator': {exc}") from exc
        insecure = v.boolean(data, "insecure", default=False)
        if insecure and not is_loopback(host):
            raise ConfigError(
                f"{where}: insecure = true is allowed only for a loopback coordinator "
                f"(127.0.0.1, ::1, localhost), not {host!r}; set ca_file instead"
            )
        tls_cert_file = tls_key_file = None
        if "tls_cert_file" in data or "tls_key_file" in data:
            if insecure:
                raise ConfigError(f"{where}: tls_cert_file (mutual TLS) excludes insecure = true")
            tls_cert_file = v.existing_file(data, "tls_cert_file")
            tls_key_file = v.existing_file(data, "tls_key_file")
        token_file = None
        if "token_file" in data or tls_cert_file is None:
            token_file = v.existing_file(data, "token_file")
        if "key_file" in data and "share_file" in data:
            raise ConfigError(f"{where}: give key_file or share_file (its older name), not both")
        share_file = v.existing_file(data, "share_file" if "share_file" in data else "key_file")
        for key, what in (
            ("signing_key_file", "the agency's signing-key.json from the key ceremony"),
            ("federation_file", "federation-public.json from the key ceremony"),
        ):
            if key not in data:
                raise ConfigError(f"{where}: key {key!r} is required ({what})")
        signing_key_file = v.existing_file(data, "signing_key_file")
        federation_file = v.existing_file(data, "federation_file")
        ca_file: Path | None = None
        if "ca_file" in data:
            ca_file = v.existing_file(data, "ca_file")
        elif not insecure:
            raise ConfigError(
                f"{where}: key 'ca_file' is required (the federation's tls/ca.pem) unless "
                "insecure = true"
            )
        log_file = v.path(data, "log_file") if "log_file" in data else None
        crypto_workers = data.get("crypto_workers", 1)
        if (
            isinstance(crypto_workers, bool)
            or not isinstance(crypto_workers, int)
            or not 1 <= crypto_workers <= MAX_CRYPTO_WORKERS
        ):
            raise ConfigError(
                f"{where}: key 'crypto_workers' must be an integer in "
                f"[1, {MAX_CRYPTO_WORKERS}], got {crypto_workers!r}"
            )
        randomness_pool = data.get("randomness_pool", DEFAULT_RANDOMNESS_POOL)
        if (
            isinstance(randomness_pool, bool)
            or not isinstance(randomness_pool, int)
            or not 0 <= randomness_pool <= MAX_RANDOMNESS_POOL
        ):
            raise ConfigError(
                f"{where}: key 'randomness_pool' must be an integer in "
                f"[0, {MAX_RANDOMNESS_POOL}] (precomputed randomness pairs; 0: off), "
                f"got {randomness_pool!r}"
            )

        raw_sets = data.get("datasets", {})
        raw_tables = data.get("tables", {})
        for key, raw in (("datasets", raw_sets), ("tables", raw_tables)):
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: [{key}] must hold [{key}.<name>] tables")
        if not raw_sets and not raw_tables:
            raise ConfigError(
                f"{where}: at least one [datasets.<name>] (for training: path, numeric, "
                "categorical, label) or [tables.<name>] (for queries: path, columns) is required"
            )
        datasets = {name: v.dataset(name, section) for name, section in raw_sets.items()}
        tables = {name: v.table(name, section) for name, section in raw_tables.items()}

        policy = data.get("policy", {})
        if not isinstance(policy, dict):
            raise ConfigError(f"{where}: [policy] must be a table")
        unknown = sorted(set(policy) - _POLICY_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: [policy] unknown key(s) {unknown}; allowed: {sorted(_POLICY_KEYS)}"
            )
        import fedcity.analytics.local
        import fedcity.learn  # noqa: F401  (registers the vetted learning steps)

        if "allowed_kinds" in policy:
            kinds = policy["allowed_kinds"]
            if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
                raise ConfigError(
                    f"{where}: [policy] key 'allowed_kinds' must be a list of strings"
                )
            unvetted = sorted(set(kinds) - set(LOCAL_STEPS))
            if unvetted:
                raise ConfigError(
                    f"{where}: [policy] key 'allowed_kinds' names unvetted kind(s) {unvetted}; "
                    f"vetted kinds: {sorted(LOCAL_STEPS)}"
                )
            allowed = frozenset(kinds)
        else:
            allowed = frozenset(LOCAL_STEPS)
        min_summands = policy.get("min_summands", 2)
        if isinstance(min_summands, bool) or not isinstance(min_summands, int) or min_summands < 1:
            raise ConfigError(
                f"{where}: [policy] key 'min_summands' must be a positive integer, "
                f"got {min_summands!r}"
            )
        min_cell_count = policy.get("min_cell_count", 10)
        if (
            isinstance(min_cell_count, bool)
            or not isinstance(min_cell_count, int)
            or min_cell_count < 1
        ):
            raise ConfigError(
                f"{where}: [policy] key 'min_cell_count' must be a positive integer, "
                f"got {min_cell_count!r}"
            )
        budget = None
        if "budget" in policy:
            try:
                budget = Budget.from_mapping(policy["budget"], f"{where}: [policy] budget")
            except LedgerError as exc:
                raise ConfigError(str(exc)) from exc
        try:
            rules = AgencyPolicy.from_dict(policy)
        except PolicyError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        approvals_file = (
            v.path(data, "approvals_file")
            if "approvals_file" in data
            else base / f"{agency}.approvals.sqlite"
        )
        audit_file = (
            v.path(data, "audit_file") if "audit_file" in data else base / f"{agency}.audit.sqlite"
        )
        ledger_file = (
            v.path(data, "ledger_file")
            if "ledger_file" in data
            else base / f"{agency}.ledger.sqlite"
        )
        return cls(
            agency=agency,
            coordinator=coordinator,
            audit_file=audit_file,
            ledger_file=ledger_file,
            budget=budget,
            token_file=token_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            share_file=share_file,
            signing_key_file=signing_key_file,
            federation_file=federation_file,
            ca_file=None if insecure else ca_file,
            insecure=insecure,
            datasets=datasets,
            tables=tables,
            allowed_kinds=allowed,
            min_cell_count=min_cell_count,
            rules=rules,
            approvals_file=approvals_file,
            log_file=log_file,
            min_summands=min_summands,
            crypto_workers=crypto_workers,
            randomness_pool=randomness_pool,
            source=source,
        )


class _Validator:
    """Typed accessors that name the file and the key in every error."""

    def __init__(self, where: str, base: Path) -> None:
        self.where = where
        self.base = base

    def fail(self, key: str, problem: str, section: str = "") -> ConfigError:
        prefix = f"[{section}] " if section else ""
        return ConfigError(f"{self.where}: {prefix}key {key!r} {problem}")

    def string(self, data: Mapping[str, Any], key: str, section: str = "") -> str:
        if key not in data:
            raise self.fail(key, "is required", section)
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, got {value!r}", section)
        return value

    def name(self, data: Mapping[str, Any], key: str) -> str:
        value = self.string(data, key)
        if not set(value) <= _NAME_CHARS or len(value) > 64:
            raise self.fail(key, f"must use letters, digits, '.', '_' or '-', got {value!r}")
        return value

    def boolean(self, data: Mapping[str, Any], key: str, *, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def path(self, data: Mapping[str, Any], key: str, section: str = "") -> Path:
        text = self.string(data, key, section)
        if "\x00" in text:
            raise self.fail(key, "must not contain a NUL character", section)
        try:
            p = Path(text).expanduser()
            return p if p.is_absolute() else (self.base / p).resolve()
        except (OSError, RuntimeError) as exc:  # a name too long, an unknown ~user
            raise self.fail(key, f"is not a usable path: {exc}", section) from exc

    def existing_file(self, data: Mapping[str, Any], key: str, section: str = "") -> Path:
        p = self.path(data, key, section)
        try:
            regular, exists = p.is_file(), p.exists()
        except OSError as exc:  # e.g. a name longer than the file system allows
            shown = str(p) if len(str(p)) <= 200 else f"{str(p)[:200]}…"
            raise self.fail(
                key, f"names {shown!r}, which cannot be examined: {exc.strerror or exc}", section
            ) from exc
        if not regular:
            what = "is not a regular file" if exists else "does not exist"
            raise self.fail(key, f"names {str(p)!r}, which {what}", section)
        return p

    def dataset(self, name: str, section: Any) -> DatasetConfig:
        path = self._file_section("datasets", name, section, _DATASET_KEYS)
        label = f"datasets.{name}"
        numeric = section.get("numeric", [])
        if not isinstance(numeric, list) or not all(isinstance(c, str) for c in numeric):
            raise self.fail("numeric", "must be a list of column names", label)
        categorical = section.get("categorical", {})
        if not isinstance(categorical, dict) or not all(
            isinstance(levels, list) and all(isinstance(lv, str) for lv in levels)
            for levels in categorical.values()
        ):
            raise self.fail(
                "categorical", "must be a table of column = [level, ...] (strings)", label
            )
        label_column = self.string(section, "label", label)
        weight = section.get("weight", "")
        if not isinstance(weight, str):
            raise self.fail("weight", f'must be a column name or "", got {weight!r}', label)
        try:
            spec = FeatureSpec(
                numeric=tuple(numeric),
                categorical={c: tuple(levels) for c, levels in categorical.items()},
                label=label_column,
                weight=weight or None,
            )
        except ValueError as exc:
            raise ConfigError(f"{self.where}: [{label}] invalid columns: {exc}") from exc
        return DatasetConfig(name, path, spec)

    def _file_section(self, kind: str, name: str, section: Any, keys: frozenset[str]) -> Path:
        """Common checks of a ``[datasets.<name>]`` or ``[tables.<name>]`` section: its path."""
        label = f"{kind}.{name}"
        if not set(name) <= _NAME_CHARS or not name:
            raise ConfigError(f"{self.where}: [{label}] names use letters, digits, '.', '_' or '-'")
        if not isinstance(section, dict):
            raise ConfigError(f"{self.where}: [{label}] must be a table")
        unknown = sorted(set(section) - keys)
        if unknown:
            raise ConfigError(
                f"{self.where}: [{label}] unknown key(s) {unknown}; allowed: {sorted(keys)}"
            )
        path = self.existing_file(section, "path", label)
        if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise self.fail(
                "path", f"must name a .csv, .parquet or .pq file, got {path.name!r}", label
            )
        return path

    def table(self, name: str, section: Any) -> TableConfig:
        path = self._file_section("tables", name, section, _TABLE_KEYS)
        label = f"tables.{name}"
        columns = section.get("columns")
        if not isinstance(columns, dict) or not columns:
            raise self.fail(
                "columns",
                'must be a non-empty table of column = "category" | "integer" | "float" | '
                '"date" | "text"',
                label,
            )
        if len(columns) > MAX_TABLE_COLUMNS:
            raise self.fail(
                "columns",
                f"declares {len(columns)} columns; the limit is {MAX_TABLE_COLUMNS}",
                label,
            )
        for column, kind in columns.items():
            if not isinstance(kind, str) or kind not in COLUMN_TYPES:
                raise self.fail(
                    "columns",
                    f"column {column!r} has type {kind!r}; types: {sorted(COLUMN_TYPES)}",
                    label,
                )
        return TableConfig(name, path, dict(columns))
