"""One agency's table, validated against a declared :class:`FeatureSpec`.

Everything here is sans-IO except the thin ``from_csv`` / ``from_parquet`` / ``from_path``
readers, which only read a file into a DataFrame and hand it to :meth:`AgencyDataset.from_frame`,
where all validation lives.

The statistics an agency contributes to federated preprocessing come from
:meth:`AgencyDataset.local_moments` and :meth:`AgencyDataset.level_counts` (bundled by
:meth:`AgencyDataset.summary`); they are meant to be summed securely, never sent alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "AgencyDataset",
    "DataError",
    "FeatureSpec",
    "FederatedData",
    "Moments",
    "SummaryStatistics",
    "TaskKind",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TaskKind = Literal["binary", "regression", "poisson"]
"""What a label is: 0/1, a real number, or a count."""

_SHOW = 5  # how many offending values / levels an error message lists


# --------------------------------------------------------------------------------------------
# errors


def _rebuild_data_error(
    cls: type[DataError], detail: str, agency: str, column: str | None
) -> DataError:
    return cls(detail, agency=agency, column=column)


class DataError(ValueError):
    """An agency's data does not satisfy its :class:`FeatureSpec`.

    The message always starts with the agency and, when one column is at fault, the column.

    Parameters
    ----------
    detail : str
        What is wrong.
    agency : str
        The agency whose data is at fault.
    column : str or None, default None
        The offending column, when the problem is with one column (with several missing
        columns, the first of them; the message lists all).

    Attributes
    ----------
    agency : str
    column : str or None
    detail : str
        The message without the agency/column prefix.
    """

    def __init__(self, detail: str, *, agency: str, column: str | None = None) -> None:
        self.agency = agency
        self.column = column
        self.detail = detail
        where = f"agency {agency!r}" + ("" if column is None else f", column {column!r}")
        super().__init__(f"{where}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_data_error, (type(self), self.detail, self.agency, self.column))


class _ColumnProblem(Exception):
    """Internal: a column failed validation; callers turn it into their own error type."""

    def __init__(self, column: str, detail: str) -> None:
        super().__init__(detail)
        self.column = column
        self.detail = detail


# --------------------------------------------------------------------------------------------
# feature spec


class _Vocabularies(Mapping[str, tuple[str, ...]]):
    """An immutable, ordered, hashable, picklable mapping of column -> declared levels."""

    def __init__(self, items: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        self._data: dict[str, tuple[str, ...]] = dict(items)

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return tuple(self._data.items()) == tuple(other.items())

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string, got {name!r}")
    return name


@dataclass(frozen=True)
class FeatureSpec:
    """The columns of a federated job, as every agency declares them.

    Parameters
    ----------
    numeric : tuple of str
        Numeric feature columns, in model order.
    categorical : mapping of str to tuple of str
        Each categorical feature column with its *declared* vocabulary: every level an agency
        may hold. The federation learns which of them occur from securely summed
        :meth:`AgencyDataset.level_counts`; the declared order is the one-hot order.
    label : str
        The label column (numeric; a learner checks 0/1 or counts as its task needs).
    weight : str or None, default None
        Optional column of non-negative, finite sample weights.

    Raises
    ------
    ValueError
        If a name is empty, a column is listed twice (including label or weight among the
        features), there are no features, or a vocabulary is empty or repeats a level.

    Examples
    --------
    >>> spec = FeatureSpec(
    ...     numeric=("elevation_m", "rainfall_mm"),
    ...     categorical={"land_use": ("residential", "commercial", "industrial")},
    ...     label="flooded",
    ... )
    >>> spec.features
    ('elevation_m', 'rainfall_mm', 'land_use')
    """

    numeric: tuple[str, ...]
    categorical: Mapping[str, tuple[str, ...]]
    label: str
    weight: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.numeric, str):
            raise ValueError(f"numeric must be a sequence of column names, got {self.numeric!r}")
        numeric = tuple(_check_name(c, "a numeric column name") for c in self.numeric)
        if not isinstance(self.categorical, Mapping):
            raise ValueError(
                "categorical must be a mapping of column name to declared vocabulary, "
                f"got {type(self.categorical).__name__}"
            )
        vocabularies: list[tuple[str, tuple[str, ...]]] = []
        for column, vocabulary in self.categorical.items():
            _check_name(column, "a categorical column name")
            if isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence):
                raise ValueError(
                    f"the vocabulary of categorical column {column!r} must be a sequence of "
                    f"level strings, got {vocabulary!r}"
                )
            levels = tuple(vocabulary)
            if not levels:
                raise ValueError(f"the vocabulary of categorical column {column!r} is empty")
            for level in levels:
                if not isinstance(level, str) or not level:
                    raise ValueError(
                        f"levels of categorical column {column!r} must be non-empty strings, "
                        f"got {level!r}"
                    )
            repeated = sorted({lv for lv in levels if levels.count(lv) > 1})
            if repeated:
                raise ValueError(
                    f"the vocabulary of categorical column {column!r} repeats levels {repeated}"
                )
            vocabularies.append((column, levels))
        _check_name(self.label, "label")
        if self.weight is not None:
            _check_name(self.weight, "weight")
        if not numeric and not vocabularies:
            raise ValueError("a FeatureSpec needs at least one numeric or categorical feature")
        features = numeric + tuple(c for c, _ in vocabularies)
        repeated_features = sorted({c for c in features if features.count(c) > 1})
        if repeated_features:
            raise ValueError(f"feature columns listed more than once: {repeated_features}")
        if self.label in features:
            raise ValueError(f"label {self.label!r} is also listed as a feature")
        if self.weight is not None and self.weight in (*features, self.label):
            raise ValueError(f"weight column {self.weight!r} is also a feature or the label")
        object.__setattr__(self, "numeric", numeric)
        object.__setattr__(self, "categorical", _Vocabularies(vocabularies))

    @property
    def features(self) -> tuple[str, ...]:
        """Feature columns: numeric ones, then categorical ones."""
        return self.numeric + tuple(self.categorical)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the spec uses: features, label and (if any) weight."""
        weight = () if self.weight is None else (self.weight,)
        return (*self.features, self.label, *weight)


# --------------------------------------------------------------------------------------------
# statistics


@dataclass(frozen=True, eq=False)
class Moments:
    """Weighted moments of the numeric columns (see :meth:`AgencyDataset.local_moments`).

    Unpacks like a tuple: ``count, sums, sums_of_squares = dataset.local_moments()``.

    Attributes
    ----------
    count : float
        Sum of sample weights (the number of rows when unweighted).
    sums : ndarray of float64, shape (p,)
        Per numeric column, the weighted sum of values.
    sums_of_squares : ndarray of float64, shape (p,)
        Per numeric column, the weighted sum of squared values.
    """

    count: float
    sums: FloatArray
    sums_of_squares: FloatArray

    def __iter__(self) -> Iterator[Any]:
        return iter((self.count, self.sums, self.sums_of_squares))


@dataclass(frozen=True, eq=False)
class SummaryStatistics:
    """Everything federated preprocessing needs, in one summable bundle.

    Sum the bundles of all agencies (securely: :meth:`to_vector` gives one flat float vector
    to encrypt, :meth:`from_vector` reads the decrypted sum back) and hand the total to
    :meth:`fedcity.data.FederatedPreprocessor.from_summary`.

    Parameters
    ----------
    count : float
        Sum of sample weights.
    sums, sums_of_squares : ndarray of float64, shape (p,)
        Weighted sums of the numeric columns and of their squares.
    level_counts : mapping of str to ndarray of int64
        Per categorical column, the (unweighted) number of rows at each declared level.
    """

    count: float
    sums: FloatArray
    sums_of_squares: FloatArray
    level_counts: Mapping[str, IntArray]

    def __add__(self, other: SummaryStatistics) -> SummaryStatistics:
        if not isinstance(other, SummaryStatistics):
            return NotImplemented
        if (
            self.sums.shape != other.sums.shape
            or tuple(self.level_counts) != tuple(other.level_counts)
            or any(
                self.level_counts[c].shape != other.level_counts[c].shape for c in self.level_counts
            )
        ):
            raise ValueError("cannot add summary statistics of different feature specs")
        return SummaryStatistics(
            count=self.count + other.count,
            sums=self.sums + other.sums,
            sums_of_squares=self.sums_of_squares + other.sums_of_squares,
            level_counts={
                c: self.level_counts[c] + other.level_counts[c] for c in self.level_counts
            },
        )

    @classmethod
    def total(cls, parts: Iterable[SummaryStatistics]) -> SummaryStatistics:
        """Sum several bundles (in the clear: for simulations and tests).

        Parameters
        ----------
        parts : iterable of SummaryStatistics
            At least one bundle, all for the same spec.

        Returns
        -------
        SummaryStatistics
        """
        items = list(parts)
        if not items:
            raise ValueError("need at least one SummaryStatistics to sum")
        result = items[0]
        for item in items[1:]:
            result = result + item
        return result

    @staticmethod
    def vector_length(spec: FeatureSpec) -> int:
        """Length of :meth:`to_vector` for ``spec``: ``1 + 2p + Σ vocabulary sizes``."""
        return 1 + 2 * len(spec.numeric) + sum(len(v) for v in spec.categorical.values())

    def to_vector(self) -> FloatArray:
        """Flatten to ``[count, sums, sums_of_squares, level counts per column in order]``."""
        parts = [
            np.array([self.count], dtype=np.float64),
            self.sums.astype(np.float64),
            self.sums_of_squares.astype(np.float64),
            *(c.astype(np.float64) for c in self.level_counts.values()),
        ]
        return np.concatenate(parts)

    @classmethod
    def from_vector(cls, spec: FeatureSpec, vector: npt.ArrayLike) -> SummaryStatistics:
        """Read a (summed, decrypted) :meth:`to_vector` layout back.

        Level counts are rounded to integers, so a fixed-point decoding error below 0.5 is
        harmless.

        Parameters
        ----------
        spec : FeatureSpec
        vector : array_like of float, shape (:meth:`vector_length`,)

        Returns
        -------
        SummaryStatistics

        Raises
        ------
        ValueError
            If the length is wrong, a value is not finite, or a count is negative.
        """
        v = np.asarray(vector, dtype=np.float64)
        expected = cls.vector_length(spec)
        if v.shape != (expected,):
            raise ValueError(f"expected a vector of length {expected}, got shape {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("summary vector holds non-finite values")
        p = len(spec.numeric)
        counts: dict[str, IntArray] = {}
        offset = 1 + 2 * p
        for column, vocabulary in spec.categorical.items():
            raw = np.rint(v[offset : offset + len(vocabulary)])
            if np.any(raw < 0):
                raise ValueError(f"negative level count for categorical column {column!r}")
            counts[column] = raw.astype(np.int64)
            offset += len(vocabulary)
        if v[0] < 0:
            raise ValueError(f"negative total count {v[0]}")
        return cls(
            count=float(v[0]),
            sums=v[1 : 1 + p].copy(),
            sums_of_squares=v[1 + p : 1 + 2 * p].copy(),
            level_counts=counts,
        )


# --------------------------------------------------------------------------------------------
# column validation (shared with fedcity.data.preprocess)


def _blank_mask(series: pd.Series) -> npt.NDArray[np.bool_]:
    """Missing (NaN/None/NA) or blank-string entries."""
    mask = np.array(series.isna(), dtype=bool)  # a copy: pandas may hand out read-only views
    if not (pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series)):
        values = series.to_numpy(dtype=object)
        blank = np.fromiter(
            (isinstance(v, str) and not v.strip() for v in values), dtype=bool, count=len(values)
        )
        mask |= blank
    return mask


def _check_no_missing(series: pd.Series, column: str) -> None:
    mask = _blank_mask(series)
    if mask.any():
        first = series.index[int(np.argmax(mask))]
        raise _ColumnProblem(
            column,
            f"{int(mask.sum())} missing value(s) (NaN/None/empty); first at row index {first!r}",
        )


def _as_float(value: object) -> float:
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating | str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return math.nan


def _float_values(series: pd.Series, column: str, what: str) -> FloatArray:
    """Finite float64 values of a column without missing entries, or a :class:`_ColumnProblem`."""
    dtype = series.dtype
    if pd.api.types.is_complex_dtype(dtype):
        raise _ColumnProblem(column, f"{what} column has complex dtype {dtype}")
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad_parse = np.zeros(len(values), dtype=bool)
    else:
        raw = series.to_numpy(dtype=object)
        values = np.fromiter((_as_float(v) for v in raw), dtype=np.float64, count=len(raw))
        bad_parse = np.isnan(values) & np.array(
            [not (isinstance(v, str) and v.strip().lower() == "nan") for v in raw], dtype=bool
        )
    if bad_parse.any():
        examples = list(dict.fromkeys(str(v) for v in series[bad_parse].tolist()))[:_SHOW]
        first = series.index[int(np.argmax(bad_parse))]
        raise _ColumnProblem(
            column,
            f"{what} column holds {int(bad_parse.sum())} non-numeric value(s), e.g. {examples}; "
            f"first at row index {first!r}",
        )
    nonfinite = ~np.isfinite(values)
    if nonfinite.any():
        first = series.index[int(np.argmax(nonfinite))]
        raise _ColumnProblem(
            column,
            f"{what} column holds {int(nonfinite.sum())} non-finite value(s) (inf/nan); "
            f"first at row index {first!r}",
        )
    return np.ascontiguousarray(values, dtype=np.float64)


def _level_strings(series: pd.Series) -> npt.NDArray[np.object_]:
    """Categorical values as strings: levels are matched by their string form.

    Strings are kept as they are (no stripping); integral floats lose their ``.0`` (so a
    district ``7.0`` read from a float column matches the level ``"7"``); anything else goes
    through :func:`str`.
    """
    dtype = series.dtype
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return np.array([str(int(v)) for v in values], dtype=object)
        return np.array([str(v) for v in values], dtype=object)
    raw = series.to_numpy(dtype=object)
    return np.array([v if isinstance(v, str) else str(v) for v in raw], dtype=object)


def _codes_in(strings: npt.NDArray[np.object_], levels: Sequence[str]) -> IntArray:
    """Position of every string in ``levels``, -1 where it is not one of them."""
    indexer = pd.Index(list(levels), dtype=object).get_indexer(strings)
    return np.asarray(indexer, dtype=np.int64)


def _category_codes(series: pd.Series, column: str, vocabulary: tuple[str, ...]) -> IntArray:
    """Index of each value in ``vocabulary``, or a :class:`_ColumnProblem` naming unknown levels."""
    strings = _level_strings(series)
    codes = _codes_in(strings, vocabulary)
    unknown = codes < 0
    if unknown.any():
        levels = list(dict.fromkeys(strings[unknown].tolist()))
        shown = ", ".join(repr(v) for v in levels[:_SHOW])
        more = f" and {len(levels) - _SHOW} more" if len(levels) > _SHOW else ""
        first = series.index[int(np.argmax(unknown))]
        raise _ColumnProblem(
            column,
            f"{int(unknown.sum())} value(s) outside the declared vocabulary: unexpected "
            f"level(s) {shown}{more}; first at row index {first!r}; declared levels: "
            f"{list(vocabulary)}",
        )
    return codes


# --------------------------------------------------------------------------------------------
# the dataset


class AgencyDataset:
    """One agency's validated table of features, label and optional weights.

    Build it with :meth:`from_frame` (sans-IO) or one of the file readers; all of them
    validate the data against the spec and raise :class:`DataError` on any problem. Extra
    columns are ignored. The instance holds read-only copies of the used columns only.

    Parameters
    ----------
    frame : pandas.DataFrame
        The agency's rows.
    spec : FeatureSpec
        The federation's declared columns.
    agency : str
        The agency's name, used in every error message.

    Raises
    ------
    DataError
        If a declared column is missing or repeated, the table is empty, a used column holds
        missing values, a numeric/label/weight column holds non-numeric or non-finite values,
        a weight is negative, or a categorical value is outside its declared vocabulary.
    """

    def __init__(self, frame: pd.DataFrame, spec: FeatureSpec, *, agency: str) -> None:
        if not isinstance(agency, str) or not agency.strip():
            raise ValueError(f"agency must be a non-empty string, got {agency!r}")
        if not isinstance(spec, FeatureSpec):
            raise TypeError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
        self._agency = agency
        self._spec = spec
        try:
            self._load(frame)
        except _ColumnProblem as problem:
            raise DataError(problem.detail, agency=agency, column=problem.column) from None

    def _load(self, frame: pd.DataFrame) -> None:
        spec, agency = self._spec, self._agency
        present = list(frame.columns)
        duplicated = [c for c in spec.columns if present.count(c) > 1]
        if duplicated:
            raise DataError(
                f"column(s) {duplicated} appear more than once in the table",
                agency=agency,
                column=duplicated[0],
            )
        missing = [c for c in spec.columns if c not in present]
        if missing:
            raise DataError(
                f"declared column(s) {missing} are missing from the table "
                f"(it has {len(present)} column(s))",
                agency=agency,
                column=missing[0],
            )
        if len(frame) == 0:
            raise DataError("the table has no rows", agency=agency)
        for column in spec.columns:
            _check_no_missing(frame[column], column)
        n = len(frame)
        numeric = np.empty((n, len(spec.numeric)), dtype=np.float64)
        for j, column in enumerate(spec.numeric):
            numeric[:, j] = _float_values(frame[column], column, "numeric")
        codes = np.empty((n, len(spec.categorical)), dtype=np.int64)
        for j, (column, vocabulary) in enumerate(spec.categorical.items()):
            codes[:, j] = _category_codes(frame[column], column, vocabulary)
        y = _float_values(frame[spec.label], spec.label, "label")
        if spec.weight is None:
            w = np.ones(n, dtype=np.float64)
        else:
            w = _float_values(frame[spec.weight], spec.weight, "weight")
            negative = w < 0
            if negative.any():
                first = frame.index[int(np.argmax(negative))]
                raise DataError(
                    f"{int(negative.sum())} negative weight(s); first at row index {first!r}",
                    agency=agency,
                    column=spec.weight,
                )
        for array in (numeric, codes, y, w):
            array.setflags(write=False)
        self._numeric = numeric
        self._codes = codes
        self._y = y
        self._w = w
        self._index = frame.index.copy()

    # ---- constructors ----------------------------------------------------------------------

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, spec: FeatureSpec, *, agency: str) -> AgencyDataset:
        """Validate a DataFrame (no I/O).

        Parameters
        ----------
        frame : pandas.DataFrame
            The agency's rows; extra columns are ignored. Row indices in error messages are
            this frame's index labels.
        spec : FeatureSpec
        agency : str

        Returns
        -------
        AgencyDataset

        Raises
        ------
        DataError
            See :class:`AgencyDataset`.
        """
        return cls(frame, spec, agency=agency)

    @classmethod
    def from_csv(
        cls, path: str | PathLike[str], spec: FeatureSpec, *, agency: str
    ) -> AgencyDataset:
        """Read and validate a CSV file.

        Only the declared columns are kept; categorical columns are read as strings (so the
        level ``"007"`` stays ``"007"``). pandas' default missing-value markers (empty field,
        ``NA``, ``None``, ``null``, ...) count as missing. Row indices in error messages count
        data rows from 0 (the CSV line number minus 2).

        Parameters
        ----------
        path : str or path-like
        spec : FeatureSpec
        agency : str

        Returns
        -------
        AgencyDataset

        Raises
        ------
        DataError
            If the file is missing or unreadable, or see :class:`AgencyDataset`.
        """
        file = _existing_file(path, agency)
        wanted = set(spec.columns)
        try:
            frame = pd.read_csv(
                file,
                usecols=lambda c: c in wanted,
                dtype=dict.fromkeys(spec.categorical, str),
            )
        except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise DataError(f"cannot read CSV file {str(file)!r}: {exc}", agency=agency) from exc
        return cls(frame, spec, agency=agency)

    @classmethod
    def from_parquet(
        cls, path: str | PathLike[str], spec: FeatureSpec, *, agency: str
    ) -> AgencyDataset:
        """Read and validate a Parquet file (only the declared columns are read).

        Parameters
        ----------
        path : str or path-like
        spec : FeatureSpec
        agency : str

        Returns
        -------
        AgencyDataset

        Raises
        ------
        DataError
            If the file is missing or unreadable, or see :class:`AgencyDataset`.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = _existing_file(path, agency)
        try:
            names = pq.read_schema(file).names
            table = pq.read_table(file, columns=[c for c in names if c in set(spec.columns)])
            frame = table.to_pandas()
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(
                f"cannot read Parquet file {str(file)!r}: {exc}", agency=agency
            ) from exc
        return cls(frame, spec, agency=agency)

    @classmethod
    def from_path(
        cls, path: str | PathLike[str], spec: FeatureSpec, *, agency: str
    ) -> AgencyDataset:
        """Read a ``.csv``, ``.parquet`` or ``.pq`` file, chosen by suffix (case-insensitive).

        Parameters
        ----------
        path : str or path-like
        spec : FeatureSpec
        agency : str

        Returns
        -------
        AgencyDataset

        Raises
        ------
        DataError
            If the suffix is not supported, or see :meth:`from_csv` / :meth:`from_parquet`.
        """
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            return cls.from_csv(path, spec, agency=agency)
        if suffix in (".parquet", ".pq"):
            return cls.from_parquet(path, spec, agency=agency)
        raise DataError(
            f"unsupported file type {suffix or '(none)'!r} for {str(path)!r}; "
            "expected .csv, .parquet or .pq",
            agency=agency,
        )

    # ---- accessors -------------------------------------------------------------------------

    @property
    def agency(self) -> str:
        """The agency's name."""
        return self._agency

    @property
    def spec(self) -> FeatureSpec:
        """The spec the data was validated against."""
        return self._spec

    @property
    def n_samples(self) -> int:
        """Number of rows."""
        return int(self._y.shape[0])

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        return f"AgencyDataset(agency={self._agency!r}, n_samples={self.n_samples})"

    def X_numeric(self) -> FloatArray:  # noqa: N802 - the conventional name of a design matrix
        """Numeric features, in spec order.

        Returns
        -------
        ndarray of float64, shape (n_samples, len(spec.numeric))
            A fresh copy.
        """
        return self._numeric.copy()

    def categorical_codes(self) -> IntArray:
        """Index of each categorical value in its column's declared vocabulary.

        Returns
        -------
        ndarray of int64, shape (n_samples, len(spec.categorical))
            A fresh copy.
        """
        return self._codes.copy()

    def y(self) -> FloatArray:
        """The label.

        Returns
        -------
        ndarray of float64, shape (n_samples,)
        """
        return self._y.copy()

    def sample_weight(self) -> FloatArray:
        """Sample weights (ones when the spec has no weight column).

        Returns
        -------
        ndarray of float64, shape (n_samples,)
        """
        return self._w.copy()

    def level_counts(self, column: str) -> IntArray:
        """Number of rows at each declared level of a categorical column (unweighted).

        This is the agency's share of the secure level census: summed over agencies, it tells
        the federation which declared levels occur, not which agency holds them.

        Parameters
        ----------
        column : str
            A categorical column of the spec.

        Returns
        -------
        ndarray of int64, shape (len(spec.categorical[column]),)

        Raises
        ------
        KeyError
            If ``column`` is not a categorical column of the spec.
        """
        columns = list(self._spec.categorical)
        if column not in columns:
            raise KeyError(
                f"{column!r} is not a categorical column of the spec (those are {columns})"
            )
        j = columns.index(column)
        size = len(self._spec.categorical[column])
        return np.bincount(self._codes[:, j], minlength=size).astype(np.int64)

    def local_moments(self) -> Moments:
        """Weighted count, sums and sums of squares of the numeric columns.

        Summed over agencies they give the global weighted mean and population variance used
        for standardisation.

        Returns
        -------
        Moments
            ``(count, sums, sums_of_squares)``: the sum of weights (float), and two float64
            arrays of shape (len(spec.numeric),).
        """
        w = self._w
        x = self._numeric
        return Moments(
            count=float(w.sum()),
            sums=np.asarray(w @ x, dtype=np.float64),
            sums_of_squares=np.asarray(w @ (x * x), dtype=np.float64),
        )

    def summary(self) -> SummaryStatistics:
        """:meth:`local_moments` and every column's :meth:`level_counts` in one bundle.

        Returns
        -------
        SummaryStatistics
        """
        moments = self.local_moments()
        return SummaryStatistics(
            count=moments.count,
            sums=moments.sums,
            sums_of_squares=moments.sums_of_squares,
            level_counts={c: self.level_counts(c) for c in self._spec.categorical},
        )

    def to_frame(self) -> pd.DataFrame:
        """The validated columns as a normalised DataFrame.

        Numeric, label and weight columns are float64, categorical columns hold the declared
        level strings; the index is the original one. This is what
        :meth:`fedcity.data.FederatedPreprocessor.transform` and centralized baselines take.

        Returns
        -------
        pandas.DataFrame
        """
        spec = self._spec
        data: dict[str, Any] = {}
        for j, column in enumerate(spec.numeric):
            data[column] = self._numeric[:, j].copy()
        for j, (column, vocabulary) in enumerate(spec.categorical.items()):
            levels = np.asarray(vocabulary, dtype=object)
            data[column] = pd.Series(levels[self._codes[:, j]], index=self._index, dtype=str)
        data[spec.label] = self._y.copy()
        if spec.weight is not None:
            data[spec.weight] = self._w.copy()
        return pd.DataFrame(data, index=self._index)


def _existing_file(path: str | PathLike[str], agency: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise DataError(f"data file {str(file)!r} does not exist", agency=agency)
    if not file.is_file():
        raise DataError(f"data path {str(file)!r} is not a regular file", agency=agency)
    return file


# --------------------------------------------------------------------------------------------
# a horizontal federation: agencies + held-out test table


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A horizontally partitioned data set: several agencies' tables and a held-out test set.

    Every loader in :mod:`fedcity.data` returns one of these (or a subclass with extras).

    Parameters
    ----------
    name : str
        Short name of the data set.
    task : {"binary", "regression", "poisson"}
        What the label is: 0/1, a real number, or a count.
    spec : FeatureSpec
        The columns every agency (and the test table) holds.
    agencies : tuple of AgencyDataset
        Training data, one entry per agency, with distinct agency names.
    test : pandas.DataFrame
        Held-out rows, validated against ``spec`` (it may carry extra columns).

    Raises
    ------
    ValueError
        If there are no agencies, names repeat, or an agency was validated with another spec.
    DataError
        If the test table does not satisfy ``spec`` (reported as agency ``"test"``).
    """

    name: str
    task: TaskKind
    spec: FeatureSpec
    agencies: tuple[AgencyDataset, ...]
    test: pd.DataFrame

    def __post_init__(self) -> None:
        if self.task not in ("binary", "regression", "poisson"):
            raise ValueError(f"task must be 'binary', 'regression' or 'poisson', got {self.task!r}")
        agencies = tuple(self.agencies)
        if not agencies:
            raise ValueError("a federation needs at least one agency")
        names = [a.agency for a in agencies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"agency names repeat: {repeated}")
        for a in agencies:
            if a.spec != self.spec:
                raise ValueError(f"agency {a.agency!r} was validated against another spec")
        object.__setattr__(self, "agencies", agencies)
        AgencyDataset(self.test, self.spec, agency="test")

    @property
    def agency_names(self) -> tuple[str, ...]:
        """Agency names, in order."""
        return tuple(a.agency for a in self.agencies)

    @property
    def sizes(self) -> dict[str, int]:
        """Rows per agency."""
        return {a.agency: a.n_samples for a in self.agencies}

    @property
    def n_train(self) -> int:
        """Total training rows over all agencies."""
        return sum(a.n_samples for a in self.agencies)

    def test_dataset(self) -> AgencyDataset:
        """The test table as a validated :class:`AgencyDataset` (agency ``"test"``)."""
        return AgencyDataset(self.test, self.spec, agency="test")

    def train_frame(self, *, agency_column: str = "agency") -> pd.DataFrame:
        """All agencies' rows pooled (the centralized baseline's training table).

        Parameters
        ----------
        agency_column : str, default "agency"
            Name of an added column holding each row's agency.

        Returns
        -------
        pandas.DataFrame
            :meth:`AgencyDataset.to_frame` of every agency, concatenated with a fresh index.
        """
        if agency_column in self.spec.columns:
            raise ValueError(f"agency_column {agency_column!r} clashes with a spec column")
        frames = [a.to_frame().assign(**{agency_column: a.agency}) for a in self.agencies]
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> SummaryStatistics:
        """The plaintext sum of every agency's :meth:`AgencyDataset.summary`.

        This is the value the federation computes under encryption; use it as the reference
        in simulations and tests.
        """
        return SummaryStatistics.total(a.summary() for a in self.agencies)
