"""Exact federated generalised linear models by Newton / IRLS.

Each round every agency evaluates, at the current coefficients β (intercept first), its
share of the loss, gradient and Hessian over its own rows and sends them — encrypted, packed
and normalised by the public total weight W — as one vector. Only the sum is decrypted. The
coordinator adds the L2 penalty and takes a Newton step, halving it if the objective rose.
Because the sum of the agencies' gradients and Hessians is exactly the pooled gradient and
Hessian, the result equals scikit-learn's solution on the pooled data, up to the fixed-point
precision of the packing (about 1e-12 relative at 48 bits).

Objectives, matching scikit-learn's estimators:

=============  ==========================================  =============================
family         minimised                                   scikit-learn
=============  ==========================================  =============================
``logistic``   Σ w·logloss + ‖β₋₀‖² / (2C)                 ``LogisticRegression(C=C)``
``ridge``      ½ Σ w·(y − η)² + ½ α ‖β₋₀‖²                 ``Ridge(alpha=α)``
``poisson``    Σ w·(μ − y·η) + ½ α W ‖β₋₀‖²                ``PoissonRegressor(alpha=α)``
=============  ==========================================  =============================

(β₋₀: coefficients without the intercept, which is not penalised.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.special import expit

from fedcity.core.errors import JobFailed
from fedcity.core.tasks import TaskRequest, local_step
from fedcity.learn.algorithm import Algorithm, RoundRecord
from fedcity.learn.design import Preprocessing, design_matrix

if TYPE_CHECKING:
    from fedcity.data.dataset import AgencyDataset

__all__ = ["FederatedGLM", "GLMFamily", "convergence_message"]

GLMFamily = Literal["logistic", "ridge", "poisson"]
_FAMILIES = ("logistic", "ridge", "poisson")
_MIN_CLIP = 256.0
_MAX_STEP = 5.0
"""Largest change of one standardised coefficient per Newton step (a trust region)."""


def _inf_norm(step: npt.NDArray[np.float64]) -> float:
    return float(np.max(np.abs(step))) if step.size else 0.0


def convergence_message(
    family: str,
    n_iter: int,
    last_step: float | None,
    tol: float,
) -> str:
    """The text of the ``ConvergenceWarning`` of a GLM fit that hit ``max_iter``.

    Parameters
    ----------
    family : str
    n_iter : int
        Newton rounds run (equal to ``max_iter``).
    last_step : float or None
        Largest change of one standardised coefficient in the last step (None or NaN: unknown).
    tol : float
        The job's tolerance.

    Returns
    -------
    str
    """
    parts = [
        f"federated {family} regression (Newton) did not converge in {n_iter} iterations "
        f"(max_iter={n_iter})"
    ]
    if last_step is not None and np.isfinite(last_step):
        parts.append(
            f"the last step changed a standardised coefficient by up to {last_step:.3g} "
            f"(stopping tolerance tol={tol:g}, relative to 1 + max|coefficient|)"
        )
    hint = "increase max_iter"
    if family == "logistic":
        hint += ", or check whether a feature separates the classes perfectly"
    return "; ".join(parts) + f". To fit further, {hint}."


def _triu_len(p: int) -> int:
    return p * (p + 1) // 2


def glm_vector_length(n_coef: int) -> int:
    """Gradient, upper-triangular Hessian and loss for ``n_coef`` coefficients."""
    return n_coef + _triu_len(n_coef) + 1


def _local_terms(
    family: str,
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64],
    beta: npt.NDArray[np.float64],
) -> tuple[float, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    eta = x @ beta
    if family == "logistic":
        mu = expit(eta)
        # log(1 + e^eta) - y*eta, computed stably
        loss = float(w @ (np.logaddexp(0.0, eta) - y * eta))
        resid, curv = mu - y, mu * (1.0 - mu)
    elif family == "poisson":
        mu = np.exp(eta)
        loss = float(w @ (mu - y * eta))
        resid, curv = mu - y, mu
    else:
        resid = eta - y
        loss = float(0.5 * (w @ resid**2))
        curv = np.ones_like(eta)
    grad = x.T @ (w * resid)
    hess = (x * (w * curv)[:, None]).T @ x
    return loss, grad, hess


@local_step("glm.newton")
def _glm_newton(params: Mapping[str, Any], data: AgencyDataset) -> npt.NDArray[np.float64]:
    family = params["family"]
    pre = Preprocessing.from_params(params["preprocessing"])
    z = design_matrix(pre, data)
    x = np.hstack([np.ones((z.shape[0], 1)), z])
    y = data.y()
    if family == "logistic" and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"agency {data.agency!r}: logistic regression needs labels 0/1")
    if family == "poisson" and (y < 0).any():
        raise ValueError(f"agency {data.agency!r}: Poisson regression needs labels >= 0")
    beta = np.asarray(params["beta"], dtype=np.float64)
    loss, grad, hess = _local_terms(family, x, y, data.sample_weight(), beta)
    iu = np.triu_indices(x.shape[1])
    return np.concatenate([grad, hess[iu], [loss]]) / pre.total_weight


class FederatedGLM(Algorithm):
    """Newton / IRLS for a penalised GLM over secure sums.

    Parameters
    ----------
    family : {"logistic", "ridge", "poisson"}
    preprocessing : Preprocessing
        Released by :class:`~fedcity.learn.stats.FederatedStatistics`.
    penalty : float
        ``1 / C`` for logistic, ``α`` for ridge, ``α`` for Poisson (scaled by W inside).
    max_iter : int, default 25
        Newton rounds at most (backtracking rounds included).
    tol : float, default 1e-10
        Stop when the Newton step is below ``tol · (1 + max|β|)``, or when the objective
        changes by less than the fixed-point noise of the released sums (K·step·W).
    noisy : bool, default False
        The released sums carry differential-privacy noise: take exactly ``max_iter`` steps,
        without line search (a noisy objective cannot rank steps), on the noisy Hessian
        projected to be positive definite.

    Attributes
    ----------
    beta_ : ndarray
        Coefficients, intercept first.
    n_iter_ : int
        Newton rounds run (backtracking rounds included).
    converged_ : bool
        Whether a stopping criterion was met before ``max_iter`` rounds. Always False for a
        ``noisy`` fit, which takes exactly ``max_iter`` steps by design.
    last_step_ : float
        Largest change of one standardised coefficient in the last step taken (NaN before
        any step).
    objective_history_ : list of float
        The objective at every accepted point.

    Raises
    ------
    JobFailed
        From :meth:`update`: a logistic fit whose labels are all 1 or all 0 (detected from
        the first round's released sums, before any step), or a line search that fails.
    """

    def __init__(
        self,
        family: GLMFamily,
        preprocessing: Preprocessing,
        *,
        penalty: float,
        max_iter: int = 25,
        tol: float = 1e-10,
        noisy: bool = False,
    ) -> None:
        if family not in _FAMILIES:
            raise ValueError(f"family must be one of {_FAMILIES}, got {family!r}")
        if not np.isfinite(penalty) or penalty < 0:
            raise ValueError(f"penalty must be finite and >= 0, got {penalty}")
        self.family = family
        self.pre = preprocessing
        self.n_coef = preprocessing.n_features + 1
        self.lam = penalty * (preprocessing.total_weight if family == "poisson" else 1.0)
        self.max_iter = max_iter
        self.tol = tol
        self.noisy = noisy
        self.clip = _MIN_CLIP
        self.beta_ = np.zeros(self.n_coef)
        self._accepted: tuple[npt.NDArray[np.float64], float] | None = None
        self._step: npt.NDArray[np.float64] | None = None
        self._halvings = 0
        self.n_iter_ = 0
        self.converged_ = False
        self.last_step_ = float("nan")
        self.objective_history_: list[float] = []
        self._noise = 0.0
        self._accepted_clip = self.clip

    @property
    def max_rounds(self) -> int:
        """At most ``max_iter`` Newton rounds."""
        return self.max_iter

    def next_request(self) -> TaskRequest | None:
        """Evaluate loss, gradient and Hessian at the current coefficients."""
        if self.converged_ or self.n_iter_ >= self.max_iter:
            return None
        return TaskRequest(
            "glm.newton",
            {
                "family": self.family,
                "beta": self.beta_.tolist(),
                "preprocessing": self.pre.to_params(),
            },
            glm_vector_length(self.n_coef),
            clip=self.clip,
            precision_bits=48,
            label=f"{self.family} Newton round {self.n_iter_ + 1}",
            private=self.noisy,
        )

    def on_overflow(self, request: TaskRequest) -> bool:
        """The last step sent the sums beyond any packing bound: halve it, like a rise."""
        if self._accepted is None or self._step is None or self._halvings > 30:
            return False
        self._halvings += 1
        self._step = 0.5 * self._step
        self.last_step_ = _inf_norm(self._step)
        self.beta_ = self._accepted[0] + self._step
        self.clip = self._accepted_clip
        return True

    def _penalty_mask(self) -> npt.NDArray[np.float64]:
        mask = np.ones(self.n_coef)
        mask[0] = 0.0
        return mask

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Accept or backtrack, then take a Newton step."""
        self.n_iter_ += 1
        # Fit the next round's packing bound to the magnitudes just released (a power of two
        # with 4x headroom): a bound widened after one wild step must not cost precision for
        # the rest of the job. An underestimate is caught by the overflow flag and repeated.
        peak = float(np.max(np.abs(released))) if released.size else 0.0
        self.clip = float(max(_MIN_CLIP, 2.0 ** np.ceil(np.log2(4.0 * peak + 1e-300))))
        total_w = self.pre.total_weight
        p = self.n_coef
        grad = released[:p] * total_w
        hess = np.zeros((p, p))
        hess[np.triu_indices(p)] = released[p : p + _triu_len(p)] * total_w
        hess = hess + np.triu(hess, 1).T
        mask = self._penalty_mask()
        beta = self.beta_
        objective = float(released[-1] * total_w + 0.5 * self.lam * (mask * beta) @ beta)
        record.loss = objective / total_w
        # the released loss carries up to K·step/2 of fixed-point error; two evaluations of the
        # objective are indistinguishable within twice that
        noise = max(len(record.contributors), 1) * record.step * total_w + 1e-13 * abs(objective)
        self._noise = noise
        if self.noisy:
            self._noisy_step(grad, hess, mask, beta)
            return
        if self.family == "logistic" and self._accepted is None and not beta.any():
            self._require_both_classes(float(released[0]), float(released[p]), record)
        if self._accepted is not None and objective > self._accepted[1]:
            if objective - self._accepted[1] <= noise:
                # at the optimum, within the fixed-point noise of the released sums: keep
                # the last Newton point, whose step came from an exact gradient
                self.converged_ = True
                return
            # the full step increased the objective: halve it
            assert self._step is not None
            self._halvings += 1
            if self._halvings > 30:
                raise JobFailed(
                    f"{self.family} regression: the Newton line search failed to decrease "
                    "the objective after 30 halvings"
                )
            self._step = 0.5 * self._step
            self.last_step_ = _inf_norm(self._step)
            self.beta_ = self._accepted[0] + self._step
            return
        self._halvings = 0
        if self.family == "poisson" and self._accepted is None and not beta.any():
            # IRLS start: the intercept-only model. At beta = 0 the intercept's gradient is
            # sum w (1 - y), so the released sums already give the weighted mean count.
            mean_y = 1.0 - grad[0] / total_w
            if mean_y > 0:
                self.beta_ = np.zeros_like(beta)
                self.beta_[0] = np.log(mean_y)
                self._accepted = None
                return
        self._accepted = (beta.copy(), objective)
        self._accepted_clip = self.clip
        self.objective_history_.append(objective)
        g = grad + self.lam * mask * beta
        h = hess + self.lam * np.diag(mask)
        step: npt.NDArray[np.float64]
        try:
            step = -np.linalg.solve(h, g).astype(np.float64)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(h, g, rcond=None)[0].astype(np.float64)
        largest = _inf_norm(step)
        if self.family != "ridge" and largest > _MAX_STEP:
            step = step * (_MAX_STEP / largest)  # damped: far from the optimum, stay on the map
        self._step = step
        self.last_step_ = _inf_norm(step)
        self.beta_ = beta + step
        small = self.last_step_ <= self.tol * (1.0 + np.max(np.abs(beta)))
        if len(self.objective_history_) >= 2:
            prev, cur = self.objective_history_[-2], self.objective_history_[-1]
            small = small or (prev - cur) <= self._noise
        if self.family == "ridge" or small:
            # ridge: the quadratic objective is minimised by one exact step
            self.converged_ = True

    def _require_both_classes(self, grad0: float, hess00: float, record: RoundRecord) -> None:
        """Fail the job when the first round's sums show a single label value.

        At β = 0 every predicted probability is ½, so the intercept's released gradient is
        Σ w·(½ − y) / W and its Hessian entry Σ w / (4W): the weighted label mean is
        ½ − g / (4h). The ratio cancels W (itself a released, rounded sum) and is exact up to
        the fixed-point error of this round's sums (K·step/2 each for K contributors). On
        one-class data Newton would only push the intercept towards ±∞ until the objective
        stops changing within that error (an intercept of about 26), so refuse, as
        scikit-learn does.
        """
        if not hess00 > 0:
            return
        mean_y = 0.5 - grad0 / (4.0 * hess00)
        resolution = 4.0 * max(len(record.contributors), 1) * record.step + 1e-12
        if resolution <= mean_y <= 1.0 - resolution:
            return
        label = 1 if mean_y > 0.5 else 0
        n = self.pre.n_samples
        weighted = abs(self.pre.total_weight - n) > 1e-9 * max(n, 1)
        where = " (among rows with non-zero sample weight)" if weighted else ""
        raise JobFailed(
            f"logistic regression needs both classes: all {n} labels across the agencies "
            f"are {label}{where}"
        )

    def _noisy_step(
        self,
        grad: npt.NDArray[np.float64],
        hess: npt.NDArray[np.float64],
        mask: npt.NDArray[np.float64],
        beta: npt.NDArray[np.float64],
    ) -> None:
        g = grad + self.lam * mask * beta
        vals, vecs = np.linalg.eigh(hess)
        floor = max(1e-3 * float(np.abs(vals).max()), 1e-8)
        h = (vecs * np.maximum(vals, floor)) @ vecs.T + self.lam * np.diag(mask)
        step = -np.linalg.solve(h, g).astype(np.float64)
        largest = _inf_norm(step)
        if largest > _MAX_STEP:  # noise along flat directions must not throw the model away
            step = step * (_MAX_STEP / largest)
        self.last_step_ = _inf_norm(step)
        self.beta_ = beta + step

    @property
    def coef_(self) -> npt.NDArray[np.float64]:
        """Coefficients without the intercept."""
        return self.beta_[1:]

    @property
    def intercept_(self) -> float:
        """The intercept."""
        return float(self.beta_[0])
