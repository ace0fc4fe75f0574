from __future__ import annotations

from pathlib import Path

import pytest

from fedcity.flower import FlowerKeyFiles, deal_flower_keys

NODES = 4
COMMITTEE = 3
THRESHOLD = 2


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> FlowerKeyFiles:
    """4 nodes; node-0..node-2 hold shares of a 2-of-3 key (512 bits: tests only)."""
    root: Path = tmp_path_factory.mktemp("flower-keys")
    return deal_flower_keys(root, NODES, threshold=THRESHOLD, committee=COMMITTEE, key_bits=512)
