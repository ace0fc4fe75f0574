"""Standardisation and one-hot encoding fitted from securely summed statistics.

:class:`FederatedPreprocessor` is a scikit-learn transformer whose learned state — global
weighted means and population standard deviations of the numeric columns, and the declared
categorical levels that occur anywhere in the federation — can be built in two ways that give
the same result (up to floating-point summation order):

* federated: :meth:`FederatedPreprocessor.from_statistics` (or ``from_summary``) on the sum
  over agencies of :meth:`fedcity.data.AgencyDataset.summary`, a sum the federation computes
  under encryption, so no agency's own statistics are revealed;
* centralized: :meth:`FederatedPreprocessor.fit` on the pooled table, for baselines and tests.

The transform is the same as scikit-learn's ``StandardScaler`` on the numeric columns followed
by ``OneHotEncoder(categories=<levels seen>, handle_unknown="ignore")`` on the categorical ones.

Input is a pandas DataFrame (columns matched by name; needed whenever categorical columns are
declared) or, without categorical columns, any 2-D array-like (columns taken by position).
With no column declared at all, every column of ``X`` is numeric, as for ``StandardScaler``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import (
    _check_feature_names_in,
    _check_sample_weight,
    check_array,
    check_is_fitted,
    validate_data,
)

from fedcity.data.dataset import (
    AgencyDataset,
    FeatureSpec,
    SummaryStatistics,
    _check_no_missing,
    _codes_in,
    _ColumnProblem,
    _float_values,
    _level_strings,
)

__all__ = ["FederatedPreprocessor"]

FloatArray = npt.NDArray[np.float64]

_CONSTANT_RTOL = 1e-12
"""A column counts as constant (scale 1.0) when its variance is at most this fraction of its
mean square: below that, ``E[x²] - E[x]²`` from summed moments is rounding noise."""


class FederatedPreprocessor(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Standardise numeric columns and one-hot encode categorical ones.

    Parameters
    ----------
    numeric : sequence of str, default ()
        Numeric columns, in output order. A DataFrame ``X`` must hold them (matched by name,
        other columns are ignored); an array ``X`` (allowed only without categorical columns)
        must have exactly ``len(numeric)`` columns, taken in this order.
    categorical : mapping of str to sequence of str or None, default None
        Categorical columns with their declared vocabularies, in output order. Declaring any
        requires ``X`` to be a pandas DataFrame.

        With neither ``numeric`` nor ``categorical`` declared, every column of ``X`` is numeric
        and standardised, as by ``StandardScaler``: the columns are named by the DataFrame's
        string column names, else ``x0, x1, ...``.

    Attributes
    ----------
    mean_ : ndarray of float64, shape (n_numeric,)
        Global (weighted) means.
    var_ : ndarray of float64, shape (n_numeric,)
        Global (weighted) population variances.
    scale_ : ndarray of float64, shape (n_numeric,)
        Population standard deviations, 1.0 for constant columns (as ``StandardScaler``).
    numeric_ : tuple of str
        The numeric columns: ``numeric`` when declared, else the resolved names of every input
        column.
    categories_ : dict of str to tuple of str
        Per categorical column, the declared levels with a global count above zero, in declared
        order. Other values (declared but unseen, or undeclared) encode as all zeros.
    level_counts_ : dict of str to ndarray of int64
        Global count of every declared level.
    n_samples_seen_ : float
        Sum of sample weights the statistics came from.
    feature_names_in_ : ndarray of str, shape (n_features_in_,)
        With declared columns: the declared columns, numeric then categorical. With none
        declared: the column names of a DataFrame ``X`` whose column names are all strings
        (undefined otherwise), as for any scikit-learn estimator.
    n_features_in_ : int
        Number of input columns used.
    feature_names_out_ : ndarray of str
        Numeric column names, then ``"<column>_<level>"`` for every level in ``categories_``.

    See Also
    --------
    sklearn.preprocessing.StandardScaler : The numeric part, fitted centrally.
    sklearn.preprocessing.OneHotEncoder : The categorical part.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"x": [1.0, 3.0], "kind": ["a", "b"]})
    >>> pre = FederatedPreprocessor(numeric=["x"], categorical={"kind": ("a", "b", "c")})
    >>> pre.fit(frame).transform(frame)
    array([[-1.,  1.,  0.],
           [ 1.,  0.,  1.]])
    >>> list(pre.get_feature_names_out())
    ['x', 'kind_a', 'kind_b']
    >>> FederatedPreprocessor().fit_transform([[1.0, 10.0], [3.0, 10.0]])
    array([[-1.,  0.],
           [ 1.,  0.]])
    """

    def __init__(
        self,
        numeric: tuple[str, ...] | list[str] = (),
        categorical: Mapping[str, tuple[str, ...] | list[str]] | None = None,
    ) -> None:
        self.numeric = numeric
        self.categorical = categorical

    def __sklearn_tags__(self) -> Any:
        """Estimator tags: dense, finite input; float64 output; categorical needs a DataFrame.

        Returns
        -------
        sklearn.utils.Tags
        """
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        tags.transformer_tags.preserves_dtype = ["float64"]
        tags.input_tags.categorical = (
            isinstance(self.categorical, Mapping) and len(self.categorical) > 0
        )
        return tags

    # ---- parameters ------------------------------------------------------------------------

    def _columns(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        """Validated ``(numeric, categorical)`` parameters; both empty when nothing is declared."""
        if isinstance(self.numeric, str):
            raise ValueError(f"numeric must be a sequence of column names, got {self.numeric!r}")
        try:
            numeric = tuple(self.numeric)
        except TypeError:
            raise ValueError(
                f"numeric must be a sequence of column names, got {self.numeric!r}"
            ) from None
        if self.categorical is not None and not isinstance(self.categorical, Mapping):
            raise ValueError(
                "categorical must be a mapping of column name to declared levels or None, "
                f"got {self.categorical!r}"
            )
        categorical: dict[str, tuple[str, ...]] = {}
        for column, vocabulary in (self.categorical or {}).items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"column names must be non-empty strings, got {column!r}")
            if isinstance(vocabulary, str):
                raise ValueError(
                    f"the vocabulary of {column!r} must be a sequence of levels, got {vocabulary!r}"
                )
            categorical[column] = tuple(vocabulary)
        for column in numeric:
            if not isinstance(column, str) or not column:
                raise ValueError(f"column names must be non-empty strings, got {column!r}")
        for column, levels in categorical.items():
            if not levels or len(set(levels)) != len(levels):
                raise ValueError(
                    f"the vocabulary of {column!r} must be non-empty without repeated levels"
                )
            if not all(isinstance(level, str) and level for level in levels):
                raise ValueError(f"levels of {column!r} must be non-empty strings")
        every = numeric + tuple(categorical)
        if len(set(every)) != len(every):
            raise ValueError(f"a column is listed twice among {list(every)}")
        return numeric, categorical

    # ---- building ----------------------------------------------------------------------------

    @classmethod
    def from_statistics(
        cls,
        spec: FeatureSpec,
        count: float,
        sums: npt.ArrayLike,
        sums_sq: npt.ArrayLike,
        level_counts: Mapping[str, npt.ArrayLike],
    ) -> FederatedPreprocessor:
        """A fitted preprocessor from globally summed statistics.

        Parameters
        ----------
        spec : FeatureSpec
            Supplies the numeric columns and the declared vocabularies.
        count : float
            Global sum of sample weights.
        sums, sums_sq : array_like of float, shape (len(spec.numeric),)
            Global weighted sums of each numeric column and of its squares.
        level_counts : mapping of str to array_like of int
            Global count of every declared level, for every categorical column.

        Returns
        -------
        FederatedPreprocessor
            Fitted.

        Raises
        ------
        ValueError
            If a shape does not match the spec, a statistic is not finite, the count is not
            positive, or a categorical column has no level with a positive count.
        """
        pre = cls(numeric=spec.numeric, categorical=dict(spec.categorical))
        numeric, categorical = pre._columns()
        pre._set_statistics(numeric, categorical, count, sums, sums_sq, level_counts)
        return pre

    @classmethod
    def from_summary(cls, spec: FeatureSpec, summary: SummaryStatistics) -> FederatedPreprocessor:
        """:meth:`from_statistics` on a summed :class:`~fedcity.data.SummaryStatistics`.

        Parameters
        ----------
        spec : FeatureSpec
        summary : SummaryStatistics
            The sum over agencies of :meth:`fedcity.data.AgencyDataset.summary`.

        Returns
        -------
        FederatedPreprocessor
            Fitted.
        """
        return cls.from_statistics(
            spec, summary.count, summary.sums, summary.sums_of_squares, summary.level_counts
        )

    def fit(self, X: Any, y: object = None, sample_weight: npt.ArrayLike | None = None) -> Self:
        """Compute the same statistics centrally from a pooled table.

        Parameters
        ----------
        X : pandas.DataFrame or array-like of shape (n_samples, n_features)
            A DataFrame must hold every declared numeric and categorical column; others are
            ignored. Categorical values outside the declared vocabulary are an error here (as
            they are for an agency's data). An array (only without categorical columns) must
            have ``len(numeric)`` columns, or any number when no column is declared.
        y : None
            Ignored; present for API consistency.
        sample_weight : array_like of float, shape (n_samples,), optional
            Non-negative weights, not all zero, for the means and variances (level counts are
            unweighted), as in ``StandardScaler.fit``.

        Returns
        -------
        self : FederatedPreprocessor
            Fitted.

        Raises
        ------
        TypeError
            If categorical columns are declared and ``X`` is not a DataFrame, or ``X`` is sparse.
        ValueError
            On missing columns, a wrong number of columns, empty input, missing or non-finite
            values, non-numeric values, unknown levels or invalid sample weights.
        """
        numeric, categorical = self._columns()
        declared = bool(numeric or categorical)
        counts: dict[str, npt.NDArray[np.int64]] = {}
        if not declared:
            x = self._all_numeric(X, reset=True)
            numeric = _resolved_names(self)
        elif isinstance(X, pd.DataFrame):
            frame = _require_frame(X, numeric + tuple(categorical))
            if len(frame) == 0:
                raise ValueError("cannot fit on an empty table")
            try:
                x = _numeric_block(frame, numeric)
                for column, vocabulary in categorical.items():
                    _check_no_missing(frame[column], column)
                    strings = _level_strings(frame[column])
                    codes = _codes_in(strings, vocabulary)
                    if np.any(codes < 0):
                        unknown = list(dict.fromkeys(strings[codes < 0].tolist()))[:5]
                        raise _ColumnProblem(
                            column, f"values outside the declared vocabulary, e.g. {unknown}"
                        )
                    counts[column] = np.bincount(codes, minlength=len(vocabulary)).astype(np.int64)
            except _ColumnProblem as problem:
                raise ValueError(f"column {problem.column!r}: {problem.detail}") from None
        else:
            x = self._positional(X, numeric, categorical)
        w = _check_sample_weight(sample_weight, x, dtype=np.float64, ensure_non_negative=True)
        self._set_statistics(
            numeric,
            categorical,
            float(w.sum()),
            w @ x,
            w @ (x * x),
            counts,
            declared=declared,
        )
        return self

    def _set_statistics(
        self,
        numeric: tuple[str, ...],
        categorical: Mapping[str, tuple[str, ...]],
        count: float,
        sums: npt.ArrayLike,
        sums_sq: npt.ArrayLike,
        level_counts: Mapping[str, npt.ArrayLike],
        *,
        declared: bool = True,
    ) -> None:
        """Install the learned state; ``declared`` also sets the input names and count."""
        p = len(numeric)
        if not (numeric or categorical):
            raise ValueError("FederatedPreprocessor needs at least one column")
        total = float(count)
        s = np.asarray(sums, dtype=np.float64)
        s2 = np.asarray(sums_sq, dtype=np.float64)
        if s.shape != (p,) or s2.shape != (p,):
            raise ValueError(
                f"sums and sums_sq must have shape ({p},), got {s.shape} and {s2.shape}"
            )
        if not (np.isfinite(total) and total > 0):
            raise ValueError(f"count must be positive and finite, got {count!r}")
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(s2))):
            raise ValueError("sums and sums_sq must be finite")
        if set(level_counts) != set(categorical):
            raise ValueError(
                f"level_counts must have exactly the categorical columns {list(categorical)}, "
                f"got {list(level_counts)}"
            )
        counts: dict[str, npt.NDArray[np.int64]] = {}
        categories: dict[str, tuple[str, ...]] = {}
        for column, vocabulary in categorical.items():
            raw = np.asarray(level_counts[column])
            if raw.shape != (len(vocabulary),):
                raise ValueError(
                    f"level_counts[{column!r}] must have shape ({len(vocabulary)},), "
                    f"got {raw.shape}"
                )
            if not np.all(np.isfinite(raw)) or np.any(raw < 0):
                raise ValueError(f"level_counts[{column!r}] must be finite and non-negative")
            counts[column] = np.rint(raw).astype(np.int64)
            seen = tuple(lv for lv, k in zip(vocabulary, counts[column], strict=True) if k > 0)
            if not seen:
                raise ValueError(f"no declared level of {column!r} has a positive count")
            categories[column] = seen
        mean = s / total
        mean_square = s2 / total
        var = np.maximum(mean_square - mean * mean, 0.0)
        constant = var <= _CONSTANT_RTOL * mean_square
        var = np.where(constant, 0.0, var)
        scale = np.where(constant, 1.0, np.sqrt(var))
        self.mean_ = mean
        self.var_ = var
        self.scale_ = scale
        self.n_samples_seen_ = total
        self.numeric_ = tuple(numeric)
        self.level_counts_ = counts
        self.categories_ = categories
        if declared:
            self.feature_names_in_ = np.asarray(numeric + tuple(categorical), dtype=object)
            self.n_features_in_ = len(numeric) + len(categorical)
        self.feature_names_out_ = np.asarray(
            [*numeric, *(f"{c}_{lv}" for c, levels in categories.items() for lv in levels)],
            dtype=object,
        )

    # ---- input validation --------------------------------------------------------------------

    def _all_numeric(self, X: Any, *, reset: bool) -> FloatArray:
        """``X`` as finite float64 when no column is declared (``validate_data`` semantics)."""
        try:
            x: FloatArray = validate_data(self, X, dtype=np.float64, reset=reset)
        except ValueError as error:
            if isinstance(X, pd.DataFrame):
                other = [
                    c
                    for c in X.columns
                    if not (
                        pd.api.types.is_numeric_dtype(X[c].dtype)
                        or pd.api.types.is_bool_dtype(X[c].dtype)
                    )
                ]
                if other:
                    raise ValueError(
                        f"{type(self).__name__} with no column declared treats every column "
                        f"of X as numeric, but column(s) {other} are not numeric ({error}); "
                        "declare at least one numeric or categorical column to choose the "
                        "columns"
                    ) from error
            raise
        return x

    def _positional(
        self, X: Any, numeric: tuple[str, ...], categorical: Mapping[str, tuple[str, ...]]
    ) -> FloatArray:
        """A non-DataFrame ``X`` as finite float64 holding the declared numeric columns."""
        if categorical:
            raise TypeError(
                f"{type(self).__name__} with categorical columns {list(categorical)} needs X "
                f"as a pandas DataFrame (they are matched by name), got {type(X).__name__}"
            )
        x: FloatArray = check_array(X, dtype=np.float64, estimator=self, input_name="X")
        if x.shape[1] != len(numeric):
            raise ValueError(
                f"X has {x.shape[1]} features, but {type(self).__name__} is expecting "
                f"{len(numeric)} features as input."
            )
        return x

    # ---- using -------------------------------------------------------------------------------

    def transform(self, X: Any) -> FloatArray:
        """Standardised numeric columns, then one-hot columns.

        Parameters
        ----------
        X : pandas.DataFrame or array-like of shape (n_samples, n_features)
            As for :meth:`fit`. A DataFrame must hold every declared column; others are
            ignored. Without declared columns, ``X`` must have the columns seen in fit.

        Returns
        -------
        ndarray of float64, shape (n_samples, len(feature_names_out_))

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before :meth:`fit`.
        TypeError
            If categorical columns are declared and ``X`` is not a DataFrame, or ``X`` is sparse.
        ValueError
            On missing columns, a wrong number of columns, missing or non-finite values or
            non-numeric values.
        """
        check_is_fitted(self, "feature_names_out_")
        numeric, categorical = self._columns()
        if not (numeric or categorical):
            x = self._all_numeric(X, reset=False)
            return np.ascontiguousarray((x - self.mean_) / self.scale_, dtype=np.float64)
        if not isinstance(X, pd.DataFrame):
            x = self._positional(X, numeric, categorical)
            return np.ascontiguousarray((x - self.mean_) / self.scale_, dtype=np.float64)
        frame = _require_frame(X, numeric + tuple(categorical))
        try:
            x = _numeric_block(frame, numeric)
            strings: list[npt.NDArray[np.object_]] = []
            for column in categorical:
                _check_no_missing(frame[column], column)
                strings.append(_level_strings(frame[column]))
        except _ColumnProblem as problem:
            raise ValueError(f"column {problem.column!r}: {problem.detail}") from None
        blocks = [(x - self.mean_) / self.scale_]
        for column, values in zip(categorical, strings, strict=True):
            levels = list(self.categories_[column])
            codes = _codes_in(values, levels)
            blocks.append(_one_hot(codes, len(levels)))
        return np.ascontiguousarray(np.hstack(blocks), dtype=np.float64)

    def transform_dataset(self, dataset: AgencyDataset) -> FloatArray:
        """:meth:`transform` straight from an agency's validated arrays (no DataFrame).

        Parameters
        ----------
        dataset : AgencyDataset
            Must use the same numeric columns and vocabularies as this preprocessor.

        Returns
        -------
        ndarray of float64, shape (dataset.n_samples, len(feature_names_out_))
        """
        check_is_fitted(self, "feature_names_out_")
        _, categorical = self._columns()
        numeric = self.numeric_
        spec = dataset.spec
        if spec.numeric != numeric or tuple(spec.categorical.items()) != tuple(categorical.items()):
            raise ValueError(
                f"dataset of agency {dataset.agency!r} has a different spec from this preprocessor"
            )
        blocks = [(dataset.X_numeric() - self.mean_) / self.scale_]
        codes = dataset.categorical_codes()
        for j, (column, vocabulary) in enumerate(categorical.items()):
            seen = self.categories_[column]
            position = {lv: i for i, lv in enumerate(seen)}
            remap = np.array([position.get(lv, -1) for lv in vocabulary], dtype=np.int64)
            blocks.append(_one_hot(remap[codes[:, j]], len(seen)))
        return np.ascontiguousarray(np.hstack(blocks), dtype=np.float64)

    def get_feature_names_out(self, input_features: object = None) -> npt.NDArray[np.object_]:
        """Output column names: numeric names, then ``"<column>_<level>"``.

        Parameters
        ----------
        input_features : array-like of str or None, default None
            Names of the columns of ``X``. With no column declared, as for ``StandardScaler``:
            must equal ``feature_names_in_`` when that is defined, and gives the output names
            otherwise (default ``x0, x1, ...``). With declared columns, only checked: it must
            name every declared column, or (without categorical columns) have one entry per
            numeric column; the output names are the declared ones.

        Returns
        -------
        ndarray of str (object dtype)

        Raises
        ------
        ValueError
            If ``input_features`` is inconsistent with the fitted input.
        """
        check_is_fitted(self, "feature_names_out_")
        numeric, categorical = self._columns()
        if not (numeric or categorical):
            checked: npt.NDArray[np.object_] = _check_feature_names_in(self, input_features)
            return np.asarray(checked, dtype=object)
        if input_features is not None:
            given = [str(name) for name in np.asarray(input_features, dtype=object).ravel()]
            declared = list(numeric + tuple(categorical))
            positional = not categorical and len(given) == len(numeric)
            if not positional and not set(declared) <= set(given):
                raise ValueError(
                    f"input_features must name every declared column {declared}"
                    + ("" if categorical else f" or have {len(numeric)} entries")
                    + f", got {given}"
                )
        names: npt.NDArray[np.object_] = self.feature_names_out_.copy()
        return names

    # ---- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-serialisable built-in types (for task parameters).

        Returns
        -------
        dict
        """
        check_is_fitted(self, "feature_names_out_")
        numeric, categorical = self._columns()
        state: dict[str, Any] = {
            "numeric": list(numeric),
            "categorical": {c: list(v) for c, v in categorical.items()},
            "count": self.n_samples_seen_,
            "mean": self.mean_.tolist(),
            "var": self.var_.tolist(),
            "scale": self.scale_.tolist(),
            "level_counts": {c: v.tolist() for c, v in self.level_counts_.items()},
        }
        if not (numeric or categorical):
            names = getattr(self, "feature_names_in_", None)
            state["feature_names_in"] = None if names is None else [str(n) for n in names]
            state["n_features_in"] = int(self.n_features_in_)
        return state

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> FederatedPreprocessor:
        """Rebuild a fitted preprocessor from :meth:`to_dict`.

        Parameters
        ----------
        state : mapping
            The output of :meth:`to_dict`.

        Returns
        -------
        FederatedPreprocessor
            Fitted; identical in behaviour to the original.
        """
        pre = cls(numeric=tuple(state["numeric"]), categorical=dict(state["categorical"]))
        numeric, categorical = pre._columns()
        declared = bool(numeric or categorical)
        if not declared:
            pre.n_features_in_ = int(state["n_features_in"])
            if state.get("feature_names_in") is not None:
                pre.feature_names_in_ = np.asarray(state["feature_names_in"], dtype=object)
            numeric = _resolved_names(pre)
        counts = {c: np.asarray(state["level_counts"][c], dtype=np.int64) for c in categorical}
        # Rebuild from the stored moments so categories_ and names follow the same rules,
        # then restore the exact stored mean/var/scale.
        count = float(state["count"])
        mean = np.asarray(state["mean"], dtype=np.float64)
        var = np.asarray(state["var"], dtype=np.float64)
        pre._set_statistics(
            numeric,
            categorical,
            count,
            mean * count,
            (var + mean * mean) * count,
            counts,
            declared=declared,
        )
        pre.mean_ = mean
        pre.var_ = var
        pre.scale_ = np.asarray(state["scale"], dtype=np.float64)
        if pre.mean_.shape != (len(numeric),) or pre.scale_.shape != (len(numeric),):
            raise ValueError("mean and scale must have one entry per numeric column")
        return pre


def _resolved_names(estimator: FederatedPreprocessor) -> tuple[str, ...]:
    """Input column names when none is declared: ``feature_names_in_``, else ``x0, x1, ...``."""
    names = _check_feature_names_in(estimator, None)
    return tuple(str(name) for name in names)


def _require_frame(X: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise ValueError(f"X is missing column(s) {missing}")
    duplicated = [c for c in columns if list(X.columns).count(c) > 1]
    if duplicated:
        raise ValueError(f"X has repeated column(s) {duplicated}")
    return X


def _numeric_block(frame: pd.DataFrame, numeric: tuple[str, ...]) -> FloatArray:
    x = np.empty((len(frame), len(numeric)), dtype=np.float64)
    for j, column in enumerate(numeric):
        _check_no_missing(frame[column], column)
        x[:, j] = _float_values(frame[column], column, "numeric")
    return x


def _one_hot(codes: npt.NDArray[np.int64], width: int) -> FloatArray:
    """Rows of zeros with a 1.0 at ``codes`` (no 1.0 where the code is -1)."""
    out = np.zeros((codes.shape[0], width), dtype=np.float64)
    known = codes >= 0
    out[np.nonzero(known)[0], codes[known]] = 1.0
    return out
