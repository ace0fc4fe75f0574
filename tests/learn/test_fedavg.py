"""FedAvg / FedProx for scikit-learn's MLP and SGD estimators (fedcity.learn.fedavg).

Learning tests run on real data sets split into agencies of unequal sizes after sorting by a
feature (non-IID: the agencies' label mixes differ widely) and compare with the same
estimator trained centrally on the pooled rows for the same total number of epochs.
"""

from __future__ import annotations

import base64
import functools
import inspect
import json
import math
import pickle
import struct
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fedcity.core.aggregation import PlaintextScheme
from fedcity.core.nodes import AgencyNode
from fedcity.core.tasks import LOCAL_STEPS, Task, TaskRequest
from fedcity.crypto import PackingSpec
from fedcity.data.dataset import AgencyDataset, FeatureSpec
from fedcity.learn import FedAvgJob, FederatedAveraging, LocalFederation, fedavg
from fedcity.learn.algorithm import Algorithm, RoundRecord
from fedcity.learn.design import Preprocessing
from fedcity.learn.stats import FederatedStatistics

# MLP settings shared by the federated and the central runs
MLP_PARAMS: dict[str, Any] = {
    "hidden_layer_sizes": (8,),
    "learning_rate_init": 0.01,
    "batch_size": 64,
    "random_state": 0,
}


def _agencies(
    frame: pd.DataFrame, spec: FeatureSpec, sort_by: str | None, fractions: Sequence[float]
) -> list[AgencyDataset]:
    """Sort by ``sort_by`` (None: shuffle) and cut into agencies with ``fractions`` of rows."""
    if sort_by is None:
        ordered = frame.sample(frac=1.0, random_state=0)
    else:
        ordered = frame.sort_values(sort_by, kind="stable")
    cuts = np.cumsum([int(f * len(frame)) for f in fractions])[:-1]
    return [
        AgencyDataset.from_frame(ordered.iloc[rows], spec, agency=f"agency-{i}")
        for i, rows in enumerate(np.split(np.arange(len(frame)), cuts))
    ]


@pytest.fixture(scope="module")
def cancer() -> dict[str, Any]:
    x, y = load_breast_cancer(return_X_y=True, as_frame=True)
    x.columns = [c.replace(" ", "_") for c in x.columns]
    frame = x.assign(y=y.astype(float))
    train, test = train_test_split(frame, test_size=0.25, random_state=0, stratify=frame["y"])
    spec = FeatureSpec(numeric=tuple(x.columns), categorical={}, label="y")
    agencies = _agencies(train, spec, "mean_radius", (0.1, 0.15, 0.3, 0.45))
    return {
        "train": train,
        "test": test,
        "spec": spec,
        "agencies": agencies,
        "cols": list(x.columns),
    }


def _central(estimator: Any, train: pd.DataFrame, cols: list[str]) -> tuple[Any, StandardScaler]:
    scaler = StandardScaler().fit(train[cols])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(scaler.transform(train[cols]), train["y"])
    return estimator, scaler


def _statistics(federation: LocalFederation, spec: FeatureSpec) -> Preprocessing:
    stats = FederatedStatistics(spec)
    federation.run(stats)
    assert stats.result_ is not None
    return stats.result_


class _Recording(Algorithm):
    """Wraps an algorithm and keeps every request it made."""

    def __init__(self, inner: Algorithm) -> None:
        self.inner = inner
        self.requests: list[TaskRequest] = []

    def next_request(self) -> TaskRequest | None:
        request = self.inner.next_request()
        if request is not None:
            self.requests.append(request)
        return request

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        self.inner.update(request, released, record)


def _local_model(
    params: dict[str, Any], agency: AgencyDataset, size: int
) -> npt.NDArray[np.float64]:
    out = LOCAL_STEPS["fedavg.local"](params, agency)
    result: npt.NDArray[np.float64] = out[:size] / out[-1]
    return result


# --------------------------------------------------------------------------------------------
# learning


def test_agencies_are_non_iid(cancer: dict[str, Any]) -> None:
    sizes = [a.n_samples for a in cancer["agencies"]]
    positives = [float(a.y().mean()) for a in cancer["agencies"]]
    assert len(set(sizes)) == len(sizes)
    assert max(positives) - min(positives) > 0.5


def test_mlp_classifier_encrypted_matches_central(cancer: dict[str, Any]) -> None:
    """Criterion: test ROC AUC within 0.01 absolute of central (accuracy reported too)."""
    rounds, epochs = 20, 2
    central, scaler = _central(
        MLPClassifier(max_iter=rounds * epochs, **MLP_PARAMS), cancer["train"], cancer["cols"]
    )
    test = cancer["test"]
    x_test = scaler.transform(test[cancer["cols"]])
    auc_central = roc_auc_score(test["y"], central.predict_proba(x_test)[:, 1])
    acc_central = accuracy_score(test["y"], central.predict(x_test))

    with LocalFederation(cancer["agencies"], key_bits=512) as federation:
        job = FedAvgJob(
            MLPClassifier(**MLP_PARAMS), rounds=rounds, local_epochs=epochs, classes=[0, 1]
        )
        assert federation.encrypted
        result = job.fit(federation)

    model = result.estimator_
    assert isinstance(model, Pipeline)
    auc_fed = roc_auc_score(test["y"], model.predict_proba(test)[:, 1])
    acc_fed = accuracy_score(test["y"], model.predict(test))
    print(
        f"MLP AUC fed {auc_fed:.4f} central {auc_central:.4f}; acc {acc_fed:.4f} {acc_central:.4f}"
    )
    assert auc_fed >= auc_central - 0.01
    # accuracy is a sanity check only: 143 test rows, one row is 0.7 %
    assert acc_fed >= acc_central - 0.03

    # the training-loss proxy falls and every round used the whole federation
    fedavg_rounds = [r for r in result.history_ if r.kind == "fedavg.local"]
    assert len(fedavg_rounds) == rounds
    losses = [r.loss for r in fedavg_rounds]
    assert losses[0] is not None and losses[-1] is not None
    assert losses[-1] < 0.2 * losses[0]
    assert all(len(r.contributors) == 4 for r in fedavg_rounds)

    # a normal, picklable scikit-learn estimator
    mlp = model[-1]
    assert isinstance(mlp, MLPClassifier)
    assert mlp.get_params() == MLPClassifier(**MLP_PARAMS).get_params()
    assert list(mlp.classes_) == [0, 1]
    assert mlp.n_features_in_ == len(cancer["cols"])
    assert mlp.n_layers_ == 3 and mlp.n_outputs_ == 1 and mlp.out_activation_ == "logistic"
    assert mlp.n_iter_ == rounds
    algo = job.algorithm_
    assert algo is not None
    np.testing.assert_array_equal(mlp.coefs_[0], algo.parameters()[0])
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict_proba(test), model.predict_proba(test))
    assert model.score(test, test["y"]) == pytest.approx(acc_fed)


def test_classes_from_secure_label_count_and_determinism(cancer: dict[str, Any]) -> None:
    """Without declared classes one counting round finds them; runs are reproducible."""
    coefs = []
    for classes in (None, [0, 1]):
        with LocalFederation(cancer["agencies"], encrypted=False) as federation:
            job = FedAvgJob(MLPClassifier(**MLP_PARAMS), rounds=3, classes=classes)
            result = job.fit(federation)
        kinds = [r.kind for r in result.history_]
        assert kinds.count("fedavg.label_counts") == (1 if classes is None else 0)
        assert kinds.count("fedavg.local") == 3
        assert job.algorithm_ is not None
        assert job.algorithm_.classes_ is not None
        assert job.algorithm_.classes_.tolist() == [0, 1]
        coefs.append(job.algorithm_.coef_vector_)
    np.testing.assert_array_equal(coefs[0], coefs[1])


def test_sgd_regressor_diabetes_close_to_central() -> None:
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    frame = x.assign(y=y.astype(float))
    train, test = train_test_split(frame, test_size=0.25, random_state=0)
    spec = FeatureSpec(numeric=tuple(x.columns), categorical={}, label="y")
    agencies = _agencies(train, spec, "bmi", (0.1, 0.2, 0.3, 0.4))
    rounds = 50
    central, scaler = _central(
        SGDRegressor(max_iter=rounds, tol=None, random_state=0), train, list(x.columns)
    )
    r2_central = central.score(scaler.transform(test[list(x.columns)]), test["y"])
    with LocalFederation(agencies, key_bits=512) as federation:
        result = FedAvgJob(SGDRegressor(random_state=0), rounds=rounds).fit(federation)
    r2_fed = result.estimator_.score(test, test["y"])
    print(f"SGDRegressor R2 fed {r2_fed:.4f} central {r2_central:.4f}")
    assert r2_fed >= r2_central - 0.02
    # unscaled targets (~150) exceed the default bound: the packing widened once and stayed
    fedavg_rounds = [r for r in result.history_ if r.kind == "fedavg.local"]
    assert fedavg_rounds[0].retried_for_overflow
    assert not any(r.retried_for_overflow for r in fedavg_rounds[1:])
    assert fedavg_rounds[-1].clip > 64.0
    sgd = result.estimator_[-1]
    assert isinstance(sgd, SGDRegressor) and sgd.coef_.shape == (len(x.columns),)


def test_fedprox_keeps_local_models_closer(cancer: dict[str, Any]) -> None:
    agencies = cancer["agencies"]
    with LocalFederation(agencies, encrypted=False) as federation:
        pre = _statistics(federation, cancer["spec"])
        base = FederatedAveraging(
            MLPClassifier(**MLP_PARAMS), pre, rounds=4, local_epochs=2, classes=[0, 1]
        )
        federation.run(base)
        prox = FederatedAveraging(
            MLPClassifier(**MLP_PARAMS), pre, rounds=4, local_epochs=2, mu=0.5, classes=[0, 1]
        )
        federation.run(prox)

    # same starting model: FedProx agencies drift less in every round's aggregate
    assert prox.drift_history_[0] < 0.5 * base.drift_history_[0]
    # from one global model, each agency's FedProx model stays closer to it than FedAvg's
    base.rounds += 1
    request = base.next_request()
    assert request is not None
    theta = base.coef_vector_
    for agency in agencies:
        far = np.linalg.norm(_local_model(dict(request.params), agency, theta.size) - theta)
        near = np.linalg.norm(
            _local_model(dict(request.params, mu=0.5), agency, theta.size) - theta
        )
        assert near < 0.7 * far, agency.agency
    # and it still learns
    assert prox.loss_history_[-1] < 0.5 * prox.loss_history_[0]


def test_fedprox_sgd_job_runs(cancer: dict[str, Any]) -> None:
    with LocalFederation(cancer["agencies"], encrypted=False) as federation:
        result = FedAvgJob(
            SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0), rounds=5, mu=1e-3
        ).fit(federation)
    test = cancer["test"]
    assert roc_auc_score(test["y"], result.estimator_.predict_proba(test)[:, 1]) > 0.95
    assert [r.label for r in result.history_][-1] == "FedProx round 5/5"


def test_dropout_average_of_remaining_agencies(cancer: dict[str, Any]) -> None:
    """After a dropout the global model is the weighted average of who contributed."""
    agencies = cancer["agencies"]
    with LocalFederation(agencies, encrypted=False) as federation:
        pre = _statistics(federation, cancer["spec"])
        algo = FederatedAveraging(MLPClassifier(**MLP_PARAMS), pre, rounds=2, classes=[0, 1])
        recording = _Recording(algo)
        federation.schedule_dropout("agency-3", at_round=1)
        records = federation.run(recording)
    assert [len(r.contributors) for r in records] == [4, 3]
    last = recording.requests[-1]
    size = algo.coef_vector_.size
    weights = [a.sample_weight().sum() for a in agencies[:3]]
    expected = sum(
        w * _local_model(dict(last.params), a, size)
        for w, a in zip(weights, agencies[:3], strict=True)
    ) / sum(weights)
    np.testing.assert_allclose(algo.coef_vector_, expected, rtol=1e-10, atol=1e-12)
    assert algo.weight_history_[0] == pytest.approx(1.0)
    assert algo.weight_history_[1] == pytest.approx(sum(weights) / pre.total_weight)


@pytest.mark.parametrize(
    "estimator",
    [
        SGDClassifier(random_state=0),
        MLPClassifier(
            hidden_layer_sizes=(6, 4), learning_rate_init=0.03, batch_size=16, random_state=0
        ),
    ],
)
def test_multiclass_iris(estimator: Any) -> None:
    """Three classes found by the secure label count; shapes and labels round-trip."""
    x, y = load_iris(return_X_y=True, as_frame=True)
    x.columns = ["sl", "sw", "pl", "pw"]
    frame = x.assign(y=y.astype(float))
    spec = FeatureSpec(numeric=tuple(x.columns), categorical={}, label="y")
    agencies = _agencies(frame, spec, None, (0.3, 0.3, 0.4))
    with LocalFederation(agencies, encrypted=False) as federation:
        result = FedAvgJob(estimator, rounds=15, local_epochs=2).fit(federation)
    model = result.estimator_
    assert list(model[-1].classes_) == [0, 1, 2]
    if isinstance(estimator, SGDClassifier):
        assert model[-1].coef_.shape == (3, 4)
    else:
        assert model.predict_proba(frame).shape == (150, 3)
        assert model[-1].out_activation_ == "softmax"
    assert accuracy_score(frame["y"], model.predict(frame)) > 0.85


def test_mlp_regressor_runs() -> None:
    x, y = load_diabetes(return_X_y=True, as_frame=True)
    frame = x.assign(y=(y - y.mean()) / y.std())
    spec = FeatureSpec(numeric=tuple(x.columns), categorical={}, label="y")
    agencies = _agencies(frame, spec, "age", (0.3, 0.3, 0.4))
    with LocalFederation(agencies, encrypted=False) as federation:
        result = FedAvgJob(
            MLPRegressor(
                hidden_layer_sizes=(4,), learning_rate_init=0.01, batch_size=32, random_state=0
            ),
            rounds=20,
        ).fit(federation)
    assert result.estimator_.score(frame, frame["y"]) > 0.3
    assert result.problem_ == "regression"


# --------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize(
    ("estimator", "kwargs", "match"),
    [
        (LogisticRegression(), {}, "trains only the scikit-learn estimators"),
        (MLPClassifier, {}, "instance"),
        (MLPClassifier(random_state=np.random.RandomState(0)), {}, "cannot be sent to agencies"),
        (MLPClassifier(solver="lbfgs"), {}, "has no partial_fit"),
        (MLPClassifier(early_stopping=True), {}, "early_stopping"),
        (SGDClassifier(average=True), {}, "average"),
        (SGDClassifier(class_weight={0: 1.0, 1: 2.0}), {}, "cannot be sent"),
        (SGDClassifier(class_weight="balanced"), {}, "class_weight"),
        (SGDRegressor(), {"rounds": 0}, "rounds must be a positive integer"),
        (SGDRegressor(), {"rounds": 2.5}, "rounds must be a positive integer"),
        (SGDRegressor(), {"local_epochs": 0}, "local_epochs"),
        (SGDRegressor(), {"mu": -0.1}, "mu must be a finite number >= 0"),
        (SGDRegressor(), {"mu": float("nan")}, "mu must be"),
        (SGDRegressor(), {"classes": [0, 1]}, "only applies to classifiers"),
        (SGDClassifier(), {"classes": [1]}, "at least two classes"),
        (SGDClassifier(), {"classes": ["a", "b"]}, "must be numbers"),
        (SGDClassifier(), {"classes": [0, 0, 1]}, "repeat"),
        (SGDClassifier(), {"seed": -1}, "seed"),
    ],
)
def test_job_rejects_bad_input(estimator: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FedAvgJob(estimator, **kwargs)


_DROP = object()  # a change that removes the key from the task parameters


def _forged_params(cancer: dict[str, Any], **changes: Any) -> dict[str, Any]:
    with LocalFederation(cancer["agencies"], encrypted=False) as federation:
        pre = _statistics(federation, cancer["spec"])
    algo = FederatedAveraging(SGDClassifier(), pre, rounds=1, classes=[0, 1])
    request = algo.next_request()
    assert request is not None
    params = {**request.params, **changes}
    return {k: v for k, v in params.items() if v is not _DROP}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"estimator": "LogisticRegression"}, "refusing estimator 'LogisticRegression'"),
        ({"estimator": "os.system"}, "refusing estimator"),
        ({"estimator": None}, "refusing estimator"),
        ({"hyperparameters": {"loss": {"__reduce__": "x"}}}, "cannot be sent"),
        ({"hyperparameters": {"no_such_param": 1}}, "no hyperparameter"),
        ({"coefs_f8": _DROP, "coefs": [0.0]}, "must be 31 finite numbers"),
        ({"coefs_f8": _DROP, "coefs": [0.0] * 30 + [math.inf]}, "must be 31 finite numbers"),
        ({"coefs_f8": _DROP, "coefs": "abc"}, "must be 31 finite numbers"),
        ({"coefs_f8": _DROP, "coefs": {"a": 1}}, "must be 31 finite numbers"),
        ({"coefs": [0.0] * 31}, "exactly one of 'coefs' .* not both"),
        ({"coefs_f8": _DROP}, "exactly one of 'coefs' .* found neither"),
        ({"coefs_f8": None}, "'coefs_f8' must be a base64 string, got NoneType"),
        ({"coefs_f8": [0.0] * 31}, "'coefs_f8' must be a base64 string, got list"),
        ({"coefs_f8": "AAAA AAAA"}, "'coefs_f8' is not valid base64"),
        ({"coefs_f8": "AAAAAAA"}, "'coefs_f8' is not valid base64"),
        ({"coefs_f8": "AAAA\nAAAA"}, "'coefs_f8' is not valid base64"),
        ({"coefs_f8": "AA-_AAAA"}, "'coefs_f8' is not valid base64"),
        ({"coefs_f8": "ÄAAA"}, "'coefs_f8' is not valid base64"),
        ({"coefs_f8": ""}, "'coefs_f8' holds 0 float64 values; the shapes .* need 31"),
        ({"coefs_f8": "AAAAAAAAAAAAAAAA"}, "'coefs_f8' decodes to 12 bytes, not a whole"),
        (
            {"coefs_f8": base64.b64encode(bytes(8 * 30)).decode()},
            r"'coefs_f8' holds 30 float64 values; the shapes \[\[1, 30\], \[1\]\] need 31 "
            r"\(248 bytes\)",
        ),
        (
            {"coefs_f8": base64.b64encode(bytes(8 * 32)).decode()},
            "'coefs_f8' holds 32 float64 values",
        ),
        (
            {"coefs_f8": base64.b64encode(bytes(8 * 31))},
            "'coefs_f8' must be a base64 string, got bytes",
        ),
        (
            {
                "coefs_f8": base64.b64encode(
                    bytes(8 * 7) + struct.pack("<d", math.nan) + struct.pack("<d", -math.inf) * 23
                ).decode()
            },
            "'coefs_f8' holds 24 non-finite value\\(s\\); the first is nan at index 7",
        ),
        (
            {"coefs_f8": base64.b64encode(bytes(8 * 30) + struct.pack("<d", math.inf)).decode()},
            "'coefs_f8' holds 1 non-finite value\\(s\\); the first is inf at index 30",
        ),
        ({"shapes": [[30, 1], [1]]}, "parameter shapes"),
        ({"mu": -1.0}, "'mu' is out of range"),
        ({"classes": None}, "must carry the job's classes"),
        ({"classes": [0.0, 2.0]}, "not among the job's classes"),
    ],
)
def test_local_step_refuses_forged_tasks(
    cancer: dict[str, Any], changes: dict[str, Any], match: str
) -> None:
    params = _forged_params(cancer, **changes)
    agency = cancer["agencies"][0]
    with pytest.raises(ValueError, match=match):
        LOCAL_STEPS["fedavg.local"](params, agency)


def test_agency_node_refuses_forged_class(cancer: dict[str, Any]) -> None:
    params = _forged_params(cancer, estimator="LogisticRegression")
    size = sum(math.prod(s) for s in params["shapes"])
    request = TaskRequest("fedavg.local", params, size + 3)
    spec = PackingSpec(clip=64.0, precision_bits=40, max_summands=4, n_length=2048)
    node = AgencyNode("agency-0", cancer["agencies"][0], PlaintextScheme())
    with pytest.raises(ValueError, match="refusing estimator"):
        node.contribute(Task("job", 0, request, spec))
    assert node.served == []


def test_label_count_rejects_non_integer_labels(cancer: dict[str, Any]) -> None:
    frame = cancer["train"].assign(y=cancer["train"]["y"] + 0.5)
    agencies = _agencies(frame, cancer["spec"], "mean_radius", (0.5, 0.5))
    with LocalFederation(agencies, encrypted=False) as federation:
        pre = _statistics(federation, cancer["spec"])
        algo = FederatedAveraging(SGDClassifier(), pre, rounds=1)
        with pytest.raises(ValueError, match="declare the job's classes"):
            federation.run(algo)


def test_algorithm_rejects_bad_input(cancer: dict[str, Any]) -> None:
    pre = Preprocessing(("x",), (0.0,), (1.0,), (), 10.0, 10)
    with pytest.raises(ValueError, match="rounds"):
        FederatedAveraging(SGDRegressor(), pre, rounds=0)
    with pytest.raises(ValueError, match="mu"):
        FederatedAveraging(SGDRegressor(), pre, mu=-1.0)
    with pytest.raises(ValueError, match="clip"):
        FederatedAveraging(SGDRegressor(), pre, clip=0.0)


def test_local_step_refuses_oversized_forged_network(cancer: dict[str, Any]) -> None:
    with LocalFederation(cancer["agencies"], encrypted=False) as federation:
        pre = _statistics(federation, cancer["spec"])
    algo = FederatedAveraging(MLPClassifier(**MLP_PARAMS), pre, rounds=1, classes=[0, 1])
    request = algo.next_request()
    assert request is not None
    hyper = {**request.params["hyperparameters"], "hidden_layer_sizes": [10**8]}
    params = {**request.params, "hyperparameters": hyper}
    with pytest.raises(ValueError, match="parameter shapes"):
        LOCAL_STEPS["fedavg.local"](params, cancer["agencies"][0])


# --------------------------------------------------------------------------------------------
# sample weights


def _weighted_agencies(cancer: dict[str, Any]) -> tuple[list[AgencyDataset], FeatureSpec]:
    base = cancer["spec"]
    spec = FeatureSpec(numeric=base.numeric, categorical={}, label="y", weight="w")
    rng = np.random.default_rng(1)
    frame = cancer["train"].assign(w=rng.uniform(0.5, 2.0, len(cancer["train"])))
    agencies = _agencies(frame, spec, "mean_radius", (0.2, 0.3, 0.5))
    zero = frame.iloc[:20].assign(w=0.0)
    agencies.append(AgencyDataset.from_frame(zero, spec, agency="agency-zero"))
    return agencies, spec


def test_sample_weights_set_each_agencys_share(cancer: dict[str, Any]) -> None:
    agencies, spec = _weighted_agencies(cancer)
    with LocalFederation(agencies, encrypted=False) as federation:
        pre = _statistics(federation, spec)
        algo = FederatedAveraging(SGDClassifier(random_state=0), pre, rounds=2, classes=[0, 1])
        recording = _Recording(algo)
        federation.run(recording)
    total = sum(a.sample_weight().sum() for a in agencies)
    # (the released W is rounded by the integer-valued counts round of stats.py; FedAvg
    # divides it out, so the average does not depend on it)
    assert pre.total_weight == pytest.approx(total, abs=0.5)
    request = recording.requests[-1]
    size = algo.coef_vector_.size
    outs = [LOCAL_STEPS["fedavg.local"](dict(request.params), a) for a in agencies]
    for agency, out in zip(agencies, outs, strict=True):
        assert out[-1] == pytest.approx(agency.sample_weight().sum() / pre.total_weight)
    # an agency whose weights are all zero contributes exactly nothing
    assert not outs[-1].any()
    expected = sum(out[:size] for out in outs) / sum(out[-1] for out in outs)
    np.testing.assert_allclose(algo.coef_vector_, expected, rtol=1e-10, atol=1e-12)
    assert algo.weight_history_[-1] == pytest.approx(total / pre.total_weight)


def test_mlp_weights_without_partial_fit_support(
    cancer: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a scikit-learn whose MLP.partial_fit lacks sample_weight: weighted bootstrap."""
    from fedcity.learn import fedavg

    agencies, spec = _weighted_agencies(cancer)
    with LocalFederation(agencies, encrypted=False) as federation:
        pre = _statistics(federation, spec)
    algo = FederatedAveraging(MLPClassifier(**MLP_PARAMS), pre, rounds=1, classes=[0, 1])
    request = algo.next_request()
    assert request is not None
    size = algo.coef_vector_.size
    weighted = _local_model(dict(request.params), agencies[0], size)
    monkeypatch.setattr(fedavg, "_accepts_sample_weight", lambda est: False)
    resampled = _local_model(dict(request.params), agencies[0], size)
    assert np.isfinite(resampled).all()
    assert not np.array_equal(weighted, resampled)
    # both moved the same way from the shared starting point
    theta = algo.coef_vector_
    cosine = (weighted - theta) @ (resampled - theta)
    cosine /= np.linalg.norm(weighted - theta) * np.linalg.norm(resampled - theta)
    assert cosine > 0.5


@pytest.mark.parametrize(
    ("estimator", "match"),
    [
        (MLPClassifier(hidden_layer_sizes=(0,)), "hidden_layer_sizes must be positive"),
        (MLPClassifier(activation="cubic"), "cannot be trained with these hyperparameters"),
        (SGDRegressor(loss="no_such_loss"), "cannot be trained with these hyperparameters"),
        (MLPRegressor(hidden_layer_sizes=(5000, 5000)), "more than 5000000 parameters"),
    ],
)
def test_job_rejects_untrainable_hyperparameters(estimator: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FedAvgJob(estimator)


# --------------------------------------------------------------------------------------------
# the global model in the task parameters: base64 of little-endian float64


def test_task_carries_model_as_base64_float64(cancer: dict[str, Any]) -> None:
    with LocalFederation(cancer["agencies"], encrypted=False) as federation:
        pre = _statistics(federation, cancer["spec"])
    algo = FederatedAveraging(MLPClassifier(**MLP_PARAMS), pre, rounds=1, classes=[0, 1])
    size = algo.coef_vector_.size
    request = algo.next_request()
    assert request is not None
    params = dict(request.params)
    assert "coefs" not in params
    text = params["coefs_f8"]
    assert isinstance(text, str)
    assert len(text) == 4 * math.ceil(8 * size / 3)
    assert base64.b64decode(text, validate=True) == algo.coef_vector_.astype("<f8").tobytes()
    # about half the JSON of the list form
    as_list = {k: v for k, v in params.items() if k != "coefs_f8"}
    as_list["coefs"] = algo.coef_vector_.tolist()
    assert len(json.dumps(text)) < 0.6 * len(json.dumps(as_list["coefs"]))
    # agencies accept both forms (here as they arrive over the network, parsed from JSON)
    # and train to exactly the same model
    agency = cancer["agencies"][1]
    via_json = json.loads(json.dumps(params, allow_nan=False))
    assert via_json["coefs_f8"] == text
    np.testing.assert_array_equal(
        LOCAL_STEPS["fedavg.local"](via_json, agency),
        LOCAL_STEPS["fedavg.local"](as_list, agency),
    )
    # every float64 survives the round trip bit for bit, signed zero and extremes included
    special = [-0.0, 0.0, 5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, math.pi]
    algo.coef_vector_ = np.concatenate([special, algo.coef_vector_[len(special) :]])
    request = algo.next_request()
    assert request is not None
    theta = fedavg._coefs(request.params, [tuple(s) for s in request.params["shapes"]])
    assert theta.dtype == np.float64 and theta.flags.writeable
    assert theta.tobytes() == algo.coef_vector_.tobytes()
    assert np.signbit(theta[0]) and not np.signbit(theta[1])


def test_base64_is_little_endian_float64() -> None:
    text = base64.b64encode(struct.pack("<3d", 1.5, -2.0, 1e-300)).decode()
    np.testing.assert_array_equal(
        fedavg._coefs({"coefs_f8": text}, [(3,)]), np.array([1.5, -2.0, 1e-300])
    )
    assert fedavg._encode_coefs(np.array([1.5, -2.0, 1e-300])) == text


def test_model_description_accepts_either_form(cancer: dict[str, Any]) -> None:
    with LocalFederation(cancer["agencies"], encrypted=False) as federation:
        result = FedAvgJob(MLPClassifier(**MLP_PARAMS), rounds=1, classes=[0, 1]).fit(federation)
    model = dict(result.model_params_)
    assert isinstance(model["coefs"], list) and "coefs_f8" not in model  # results keep lists
    compact = {k: v for k, v in model.items() if k != "coefs"}
    compact["coefs_f8"] = fedavg._encode_coefs(np.asarray(model["coefs"]))
    a = fedavg.estimator_from_model_params(model)
    b = fedavg.estimator_from_model_params(compact)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(p, q)
    with pytest.raises(ValueError, match="not both"):
        fedavg.estimator_from_model_params({**model, "coefs_f8": compact["coefs_f8"]})
    with pytest.raises(ValueError, match="'coefs_f8' is not valid base64"):
        fedavg.estimator_from_model_params({**compact, "coefs_f8": "***"})


# --------------------------------------------------------------------------------------------
# local training: one partial_fit per epoch where it takes the same steps as one per batch

_MLP_PARTIAL_FIT_WEIGHTS = (
    "sample_weight" in inspect.signature(MLPClassifier.partial_fit).parameters
)


def _local_training(
    name: str,
    hyper: dict[str, Any],
    w: npt.NDArray[np.float64],
    *,
    per_batch: bool,
    mu: float = 0.0,
    epochs: int = 3,
) -> tuple[npt.NDArray[np.float64], int, Any]:
    """Train from a fixed start on fixed rows; the flat parameters and partial_fit calls."""
    rng = np.random.default_rng(11)
    n, d = 203, 5  # 203 rows: the last batch is a partial one
    x = rng.standard_normal((n, d))
    logit = x @ rng.standard_normal(d)
    y = (logit > 0).astype(np.float64) if "Classifier" in name else logit + rng.normal(0, 0.1, n)
    est = fedavg._make_estimator(name, fedavg._check_hyperparameters(name, hyper), random_state=0)
    classes = np.array([0.0, 1.0]) if "Classifier" in name else None
    fedavg._initialise(est, name, d, classes)
    fedavg._reset_state(est, 0.0)
    anchors = [a.copy() for a in fedavg._parameter_arrays(est)]
    calls = 0
    original = est.partial_fit

    @functools.wraps(original)
    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    est.partial_fit = counting
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fedavg._train(
            est,
            name,
            x,
            y,
            w,
            epochs=epochs,
            mu=mu,
            anchors=anchors,
            rng=np.random.default_rng(5),
            per_batch=per_batch,
        )
    return fedavg._flatten(fedavg._parameter_arrays(est)), calls, est


_ADAM = {"hidden_layer_sizes": (6, 3), "learning_rate_init": 0.02, "batch_size": 32}
_UNIFORM = np.ones(203)
_WEIGHTS = np.random.default_rng(3).uniform(0.1, 3.0, 203)


@pytest.mark.parametrize("name", ["MLPClassifier", "MLPRegressor"])
@pytest.mark.parametrize(
    ("hyper", "w"),
    [
        (_ADAM, _UNIFORM),
        (_ADAM, _UNIFORM * 2.5),
        pytest.param(
            _ADAM,
            _WEIGHTS,
            marks=pytest.mark.skipif(
                not _MLP_PARTIAL_FIT_WEIGHTS, reason="MLP partial_fit takes no sample_weight"
            ),
        ),
        ({**_ADAM, "batch_size": "auto"}, _UNIFORM),  # batches of 200 and 3 rows
        ({**_ADAM, "batch_size": 500}, _WEIGHTS),  # one batch of all 203 rows
        ({**_ADAM, "batch_size": 7}, _WEIGHTS),
        ({**_ADAM, "solver": "sgd", "learning_rate": "constant", "momentum": 0.9}, _WEIGHTS),
        ({**_ADAM, "solver": "sgd", "nesterovs_momentum": False}, _UNIFORM),
    ],
)
def test_one_partial_fit_per_epoch_is_bit_identical(
    name: str, hyper: dict[str, Any], w: npt.NDArray[np.float64]
) -> None:
    batch = min(200 if hyper["batch_size"] == "auto" else hyper["batch_size"], 203)
    fast, fast_calls, est = _local_training(name, hyper, w, per_batch=False)
    slow, slow_calls, _ = _local_training(name, hyper, w, per_batch=True)
    assert fast_calls == 3
    assert slow_calls == 3 * math.ceil(203 / batch)
    np.testing.assert_array_equal(fast, slow)
    # the estimator's own settings are restored
    assert est.batch_size == hyper["batch_size"] and est.shuffle is True


def test_one_partial_fit_per_epoch_with_weighted_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scikit-learn whose MLP partial_fit has no sample_weight: resampled rows, same rule."""
    monkeypatch.setattr(fedavg, "_accepts_sample_weight", lambda est: False)
    fast, fast_calls, _ = _local_training("MLPClassifier", _ADAM, _WEIGHTS, per_batch=False)
    slow, slow_calls, _ = _local_training("MLPClassifier", _ADAM, _WEIGHTS, per_batch=True)
    assert (fast_calls, slow_calls) == (3, 3 * 7)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize(
    ("name", "hyper", "mu"),
    [
        ("MLPClassifier", _ADAM, 0.1),  # FedProx: the operator follows every batch
        ("MLPRegressor", {**_ADAM, "solver": "sgd", "learning_rate": "invscaling"}, 0.0),
        ("MLPClassifier", {**_ADAM, "solver": "sgd", "learning_rate": "adaptive"}, 0.0),
    ],
)
def test_per_batch_where_one_call_would_differ(name: str, hyper: dict[str, Any], mu: float) -> None:
    fast, fast_calls, _ = _local_training(name, hyper, _WEIGHTS, per_batch=False, mu=mu)
    slow, slow_calls, _ = _local_training(name, hyper, _WEIGHTS, per_batch=True, mu=mu)
    assert fast_calls == slow_calls == 3 * 7
    np.testing.assert_array_equal(fast, slow)


def test_batches_without_weight_are_skipped() -> None:
    """An epoch with a zero-weight batch falls back to one call per batch and skips it."""
    w = np.zeros(203)
    w[:4] = 1.0  # at most 4 of the 7 batches of an epoch have positive weight
    fast, fast_calls, _ = _local_training("MLPClassifier", _ADAM, w, per_batch=False)
    slow, slow_calls, _ = _local_training("MLPClassifier", _ADAM, w, per_batch=True)
    assert fast_calls == slow_calls <= 3 * 4
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize(("estimator", "mu"), [(SGDClassifier(), 0.0), (SGDRegressor(), 1e-3)])
def test_sgd_estimators_keep_their_chunks(estimator: Any, mu: float) -> None:
    name = type(estimator).__name__
    hyper = {"random_state": 0}
    fast, fast_calls, _ = _local_training(name, hyper, _WEIGHTS, per_batch=False, mu=mu)
    slow, slow_calls, _ = _local_training(name, hyper, _WEIGHTS, per_batch=True, mu=mu)
    assert fast_calls == slow_calls == 3 * (1 if mu == 0 else math.ceil(203 / 32))
    np.testing.assert_array_equal(fast, slow)
