"""fedcity for Flower: packed threshold Paillier aggregation for Message-API Flower apps.

A Flower app adds fedcity's encryption with two changes::

    app = ClientApp(mods=[fedcity_mod])          # client: encrypt updates, decrypt shares
    strategy = SecureFedAvg("keys/public.json")  # server: instead of FedAvg

- :func:`deal_flower_keys` — fedcity's dealer writes a key file per node: a share for the
  ``m`` members of the decryption committee, the public key for everyone else (and with
  ``signed=True`` a signing key per node and the verify-key list for the committee);
- :class:`SecureAggregationMod` / :data:`fedcity_mod` — the client mod;
- :class:`SecureFedAvg` — the strategy (a subclass of Flower's Message-API ``FedAvg``).

See ``docs/flower.md`` for what each party learns.
"""

from fedcity.flower.keys import (
    FlowerKeyFiles,
    deal_flower_keys,
    load_node_key,
    load_public_key,
    node_name,
)
from fedcity.flower.mod import KEY_CONFIG, KEY_DIR_CONFIG, SecureAggregationMod, fedcity_mod
from fedcity.flower.protocol import RoundSpec, average_error_bound
from fedcity.flower.strategy import RoundRecord, SecureFedAvg

__all__ = [
    "KEY_CONFIG",
    "KEY_DIR_CONFIG",
    "FlowerKeyFiles",
    "RoundRecord",
    "RoundSpec",
    "SecureAggregationMod",
    "SecureFedAvg",
    "average_error_bound",
    "deal_flower_keys",
    "fedcity_mod",
    "load_node_key",
    "load_public_key",
    "node_name",
]
