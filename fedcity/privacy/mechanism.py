"""Distributed noise for packed Paillier aggregation: the glue between privacy and crypto.

:class:`DistributedNoise` turns a :class:`~fedcity.privacy.accountant.DPConfig`, the packing
layout and the minimum number of contributing agencies into

- the per-agency noise share (``sample``) that each agency passes as ``noise=`` to
  :func:`fedcity.crypto.encrypt_vector`;
- the ``noise_bound`` (and a :class:`~fedcity.crypto.PackingSpec` carrying it) so that packed
  slots have room for the noise;
- a :class:`~fedcity.privacy.accountant.PrivacyAccountant` to check before and charge after
  every decrypted release;
- the standard deviation of the noise in the decrypted sum (``expected_sum_std``).

Dropout: every agency adds ``1/n_min`` of the target variance, where ``n_min`` is the fewest
agencies whose contributions can end up in a released sum (minus any that may collude with the
party reading it, since those know their own noise). If more contribute, the sum carries more
noise — a post-processing of the ``n_min`` case, so the accounting stays valid; if fewer could
contribute, ``n_min`` was set wrong and the guarantee does not hold.

No I/O happens here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from fedcity.crypto.packing import PackingSpec
from fedcity.privacy.accountant import (
    Calibration,
    DPConfig,
    PrivacyAccountant,
    Sensitivity,
    clip_l2,
    distributed_epsilon,
    quantized_sensitivity,
)
from fedcity.privacy.noise import (
    MAX_TAIL_PROBABILITY,
    RandomBytes,
    bound_for_tail,
    sample_noise,
    share_variance,
    tail_bound,
)

__all__ = ["DistributedNoise"]


class DistributedNoise:
    """Per-agency integer noise whose sum over the contributors meets a DP target.

    Parameters
    ----------
    config : DPConfig
        Privacy parameters (target ``ε`` or noise multiplier, ``δ``, clip norm, noise kind,
        planned rounds, neighbouring relation).
    spec : PackingSpec
        The packing layout; its ``step`` sets the quantization and its ``max_summands`` bounds
        the number of noise shares in a sum. Its ``noise_bound`` is replaced (see ``spec``).
    n_contributors_min : int
        Fewest agencies whose updates (and noise) enter any released sum.
    dim : int
        Number of values released per round (the vector length ``d``); the sensitivity grows
        with ``√d``.
    colluding : int, optional
        Agencies that may collude with whoever reads the released sum; their noise is not
        counted, so each agency adds ``1/(n_contributors_min - colluding)`` of the variance.
        Default ``config.colluding``.

    Attributes
    ----------
    calibration : Calibration
        Noise multiplier, summed-noise ``sigma_total``, per-agency ``share`` and the planned
        ``ε`` (see :class:`~fedcity.privacy.accountant.Calibration`).
    sensitivity : Sensitivity
        In quantization steps.
    noise_bound : int
        Largest absolute noise value a share may take; put it in the packing spec.
    spec : PackingSpec
        ``spec`` with this ``noise_bound``.
    tail_probability : float
        Rigorous bound on the probability that an untruncated share value exceeds
        ``noise_bound`` (at most ``1e-12``).
    truncation_tv_per_release : float
        ``max_summands · dim · tail_probability``: total-variation cost of truncation per
        release.

    Raises
    ------
    ValueError
        Inconsistent sizes (``n_contributors_min`` larger than ``spec.max_summands``, no
        honest contributor left), or a layout that cannot hold the noise.

    Examples
    --------
    >>> from fedcity.crypto import PackingSpec
    >>> from fedcity.privacy import DPConfig, DistributedNoise
    >>> cfg = DPConfig(epsilon=4.0, delta=1e-6, clip_norm=1.0, rounds=20)
    >>> dn = DistributedNoise(cfg, PackingSpec(max_summands=10), 5, dim=100)
    >>> dn.accountant().remaining_releases()
    20
    """

    def __init__(
        self,
        config: DPConfig,
        spec: PackingSpec,
        n_contributors_min: int,
        *,
        dim: int,
        colluding: int | None = None,
    ) -> None:
        if not isinstance(config, DPConfig):
            raise TypeError(f"config must be a DPConfig, got {type(config).__name__}")
        if not isinstance(spec, PackingSpec):
            raise TypeError(f"spec must be a PackingSpec, got {type(spec).__name__}")
        for name, value, low in (("n_contributors_min", n_contributors_min, 1), ("dim", dim, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if colluding is None:
            colluding = config.colluding
        if isinstance(colluding, bool) or not isinstance(colluding, int) or colluding < 0:
            raise ValueError(f"colluding must be a non-negative integer, got {colluding!r}")
        if n_contributors_min > spec.max_summands:
            raise ValueError(
                f"n_contributors_min={n_contributors_min} exceeds the spec's "
                f"max_summands={spec.max_summands}"
            )
        honest = n_contributors_min - colluding
        if honest < 1:
            raise ValueError(
                f"colluding={colluding} leaves no honest contributor among "
                f"n_contributors_min={n_contributors_min}"
            )
        self.config = config
        self.n_contributors_min = n_contributors_min
        self.colluding = colluding
        self.dim = dim
        self.sensitivity: Sensitivity = quantized_sensitivity(
            clip_norm=config.clip_norm, step=spec.step, dim=dim, adjacency=config.adjacency
        )
        self.calibration: Calibration = config.calibrate(
            sensitivity=self.sensitivity, n_contributors=honest
        )
        # Truncation: (1 + e^ε)·rounds·(max_summands·dim)·p must fit in the reserved δ share.
        values = spec.max_summands * dim
        budget_eps = self.calibration.epsilon_budget
        allowed = config.truncation_delta / (
            (1.0 + math.exp(min(budget_eps, 700.0))) * config.rounds * values
        )
        target = min(MAX_TAIL_PROBABILITY, allowed)
        share = self.calibration.share
        self.noise_bound: int = bound_for_tail(config.noise, share, target)
        self.tail_probability: float = tail_bound(config.noise, share, self.noise_bound)
        self.truncation_tv_per_release: float = values * self.tail_probability
        self.spec: PackingSpec = dataclasses.replace(spec, noise_bound=self.noise_bound)

    def __repr__(self) -> str:
        c = self.calibration
        return (
            f"<DistributedNoise {c.noise} z={c.noise_multiplier:.4g} "
            f"sigma_total={c.sigma_total:.4g} steps share={c.share:.4g} "
            f"n_min={self.n_contributors_min} noise_bound={self.noise_bound} "
            f"planned_epsilon={c.planned_epsilon:.4g}>"
        )

    @property
    def noise_multiplier(self) -> float:
        """``z = σ/Δ₂`` (calibrated, or as configured)."""
        return self.calibration.noise_multiplier

    @property
    def epsilon(self) -> float:
        """``ε`` of the planned ``config.rounds`` releases (untruncated part, at ``δ_rdp``)."""
        return self.calibration.planned_epsilon

    @property
    def sigma_total(self) -> float:
        """Standard deviation of the summed noise over ``n_min`` honest shares, in steps."""
        return self.calibration.sigma_total

    def epsilon_against(
        self,
        coalition: int = 0,
        *,
        releases: int | None = None,
        record_level: bool = False,
    ) -> float:
        """``ε`` of ``releases`` releases against a party that knows ``coalition`` shares.

        A contributing agency knows its own noise share and can subtract it from every
        released sum; a coalition of ``c`` contributors subtracts ``c`` shares. What protects
        an honest agency from them is the other ``n_contributors_min - c`` shares (each of the
        calibrated size), so the same bound is evaluated with that many shares.
        ``coalition = 0`` is an outside observer (the coordinator, the data scientist, the
        public): at most the configured ``ε`` when ``colluding = 0``.

        Parameters
        ----------
        coalition : int, default 0
            Contributing agencies whose shares the observer knows (itself included).
        releases : int, optional
            Default ``config.rounds``.
        record_level : bool, default False
            Protect one *record* of an agency rather than its whole update: under the default
            zero-out relation a changed record moves the agency's clipped update to any other
            clipped update, the replace-one sensitivity ``2C/s + √d`` (see
            :meth:`record_epsilon`).

        Returns
        -------
        float
            ``inf`` when no share is left unknown (``coalition >= n_contributors_min``).
        """
        c = coalition
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"coalition must be a non-negative integer, got {coalition!r}")
        k = self.config.rounds if releases is None else releases
        sens = self.sensitivity
        if record_level and self.config.adjacency == "zero_out":
            sens = quantized_sensitivity(
                clip_norm=self.config.clip_norm,
                step=self.spec.step,
                dim=self.dim,
                adjacency="replace_one",
            )
        return distributed_epsilon(
            noise=self.config.noise,
            share=self.calibration.share,
            honest_shares=max(self.n_contributors_min - c, 0),
            sensitivity=sens,
            releases=k,
            delta=self.config.delta_rdp,
            orders=self.calibration.orders,
        )

    @property
    def epsilon_against_agency(self) -> float:
        """``ε`` of the planned releases against one contributing agency (it knows its share).

        With two contributors, one agency's data is protected from the other only by its own
        share: e.g. a configured ``ε = 4`` is larger here. ``inf`` with one contributor.
        """
        return self.epsilon_against(1)

    @property
    def record_epsilon(self) -> float:
        """``ε`` of the planned releases for one record (replace-one sensitivity, see above)."""
        return self.epsilon_against(0, record_level=True)

    def clip(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """L2-clip an update to ``config.clip_norm`` (do this before encrypting it).

        Parameters
        ----------
        x : array_like of float

        Returns
        -------
        numpy.ndarray of float64
        """
        return clip_l2(x, self.config.clip_norm)

    def sample(
        self,
        d: int | None = None,
        *,
        rng: np.random.Generator | None = None,
        random_bytes: RandomBytes | None = None,
    ) -> npt.NDArray[np.int64]:
        """One agency's noise share for one release.

        Parameters
        ----------
        d : int, optional
            Number of values; at most ``dim`` (the sensitivity was computed for ``dim``).
            Default ``dim``.
        rng : numpy.random.Generator, optional
            Only for tests (numpy's samplers on this generator).
        random_bytes : callable, optional
            Only for tests; by default every draw comes from the OS CSPRNG
            (:func:`secrets.token_bytes`).

        Returns
        -------
        numpy.ndarray of int64, shape (d,)
            Values in ``[-noise_bound, noise_bound]``, ready for ``encrypt_vector(...,
            noise=...)``.
        """
        n = self.dim if d is None else d
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.dim:
            raise ValueError(f"d must be an integer in [0, dim={self.dim}], got {d!r}")
        return sample_noise(
            self.config.noise,
            self.calibration.share,
            n,
            bound=self.noise_bound,
            rng=rng,
            random_bytes=random_bytes,
        )

    def expected_sum_std(self, n_contributors: int | None = None) -> float:
        """Standard deviation of the noise in the decrypted float sum.

        Parameters
        ----------
        n_contributors : int, optional
            Number of agencies in the sum; default ``n_contributors_min``.

        Returns
        -------
        float
            ``step · √(n · Var(share))``; equals ``step · sigma_total`` for ``n = n_min`` and no
            colluders (up to the discrete Gaussian's variance being at most its scale², equal
            to float precision for shares of scale ``>= 1.5``; truncation changes it by a
            relative ``< 1e-10``).
        """
        n = self.n_contributors_min if n_contributors is None else n_contributors
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_contributors must be a positive integer, got {n_contributors!r}")
        var = share_variance(self.config.noise, self.calibration.share)
        return self.spec.step * math.sqrt(n * var)

    def accountant(self) -> PrivacyAccountant:
        """A fresh accountant for this mechanism (budget ``config.epsilon`` or the planned ``ε``).

        Returns
        -------
        PrivacyAccountant
        """
        return PrivacyAccountant.from_calibration(
            self.calibration, truncation_tv_per_release=self.truncation_tv_per_release
        )
