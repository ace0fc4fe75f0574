"""Regenerate fedcity/v1 from protos/, or check that the committed code has not drifted.

Usage: ``python tools/gen_protos.py [--check]``. With ``--check`` the code is generated into a
temporary folder and compared byte for byte with the committed files; any difference fails.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT_PACKAGE = ROOT / "fedcity" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every .proto under protos/fedcity/v1 into ``out_root``."""
    sources = sorted(PROTOS.glob("fedcity/v1/*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTOS / 'fedcity/v1'}")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(s.relative_to(PROTOS)) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(
        p for p in (out_root / "fedcity" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code drifted")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted(p for p in OUT_PACKAGE.iterdir() if p.name.endswith(GENERATED_SUFFIXES))
        if args.check:
            names_fresh = [p.name for p in fresh]
            names_committed = [p.name for p in committed]
            drift = sorted(set(names_fresh) ^ set(names_committed))
            drift += [
                p.name
                for p in fresh
                if p.name in names_committed and not filecmp.cmp(p, OUT_PACKAGE / p.name, False)
            ]
            if drift:
                print("generated protobuf code drifted from protos/: " + ", ".join(drift))
                print("run `make protos` and commit the result")
                return 1
            print(f"protobuf code up to date ({len(fresh)} files)")
            return 0
        for p in committed:
            p.unlink()
        for p in fresh:
            shutil.copy2(p, OUT_PACKAGE / p.name)
        print(f"wrote {len(fresh)} files to {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
