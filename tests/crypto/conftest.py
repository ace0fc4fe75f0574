"""Session-scoped small keys shared by the fedcity.crypto tests.

Fast tests use 512-bit moduli; the 2048-bit full-path tests are marked ``slow`` and generate
their own keys. Key fixtures are plain tuples: ``(PublicKey, PrivateKey)`` and
``(ThresholdPublicKey, [KeyShare, ...])``.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedcity.crypto import (
    KeyShare,
    PackingSpec,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    deal_threshold_key,
    generate_keypair,
)

SMALL_BITS = 512

KeyPair = tuple[PublicKey, PrivateKey]
ThresholdKey = tuple[ThresholdPublicKey, list[KeyShare]]


@pytest.fixture(scope="session")
def keypair() -> KeyPair:
    return generate_keypair(SMALL_BITS)


@pytest.fixture(scope="session")
def other_keypair() -> KeyPair:
    return generate_keypair(SMALL_BITS)


@pytest.fixture(scope="session")
def spec() -> PackingSpec:
    """16-bit precision, 8 summands: 19-bit slots, 26 slots per 512-bit plaintext."""
    return PackingSpec(clip=1.0, precision_bits=16, max_summands=8, n_length=SMALL_BITS)


@pytest.fixture(scope="session")
def threshold_3of5() -> ThresholdKey:
    return deal_threshold_key(SMALL_BITS, threshold=3, parties=5)


@pytest.fixture(scope="session")
def threshold_2of3() -> ThresholdKey:
    return deal_threshold_key(SMALL_BITS, threshold=2, parties=3)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261123)
