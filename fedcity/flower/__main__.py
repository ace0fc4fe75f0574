"""``python -m fedcity.flower deal OUT --nodes N --committee M --threshold T``: deal key files.

Prints one line per node, ``<name> <key file> <share index or 0>``, for the script that
starts the SuperNodes (``--node-config 'fedcity-key="<key file>"'``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fedcity.flower.keys import deal_flower_keys


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fedcity.flower")
    sub = parser.add_subparsers(dest="command", required=True)
    deal = sub.add_parser("deal", help="deal a committee threshold key to Flower nodes")
    deal.add_argument("out", help="directory to write (must not hold key files yet)")
    deal.add_argument("--nodes", type=int, required=True, help="nodes node-0 .. node-(N-1)")
    deal.add_argument("--committee", type=int, default=None, help="share holders (default N)")
    deal.add_argument("--threshold", type=int, required=True, help="shares needed to decrypt")
    deal.add_argument("--key-bits", type=int, default=2048, help="Paillier modulus bits")
    deal.add_argument(
        "--signed",
        action="store_true",
        help="also deal signing keys; committee members then decrypt only signed sums",
    )
    args = parser.parse_args(argv)
    try:
        files = deal_flower_keys(
            args.out,
            args.nodes,
            threshold=args.threshold,
            committee=args.committee,
            key_bits=args.key_bits,
            signed=args.signed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"public {files.public} 0")
    for name, path in files.nodes.items():
        print(f"{name} {path} {files.committee.get(name, 0)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
