"""fedcity: privacy-preserving federated analytics between city agencies.

Agencies keep their records; they exchange only Paillier-encrypted, packed updates that a
coordinator adds without being able to read, and a threshold of agencies decrypts only the
aggregate.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
