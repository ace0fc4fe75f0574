"""Secure federated analytics: declarative group-by queries over agencies' tables.

::

    from fedcity.analytics import LocalTable, QuerySpec, TableSchema, run_query

    schema = TableSchema("inspections", {"ward": "category", "critical": "integer"})
    tables = [LocalTable(path, schema, agency=name) for name, path in files.items()]
    result = run_query(QuerySpec.from_toml("query.toml"), tables, threshold=3)
    result.frame            # one row per cell, small cells suppressed, reasons given
    result.plot("rates.svg")

See ``docs/analytics.md``.
"""

from fedcity.analytics.local import DataError, LocalTable
from fedcity.analytics.query import QueryAlgorithm, QueryJob, query_job_from_spec
from fedcity.analytics.result import QueryResult
from fedcity.analytics.run import QueryFederation, run_query
from fedcity.analytics.spec import QueryError, QuerySpec, TableSchema

__all__ = [
    "DataError",
    "LocalTable",
    "QueryAlgorithm",
    "QueryError",
    "QueryFederation",
    "QueryJob",
    "QueryResult",
    "QuerySpec",
    "TableSchema",
    "query_job_from_spec",
    "run_query",
]
