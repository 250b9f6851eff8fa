"""Generate the Python gRPC stubs from protos/ (the only way they are made; a test checks drift).

    python -m scripts.dev.gen_protos            # write embedder/v1/*_pb2*.py
    python -m scripts.dev.gen_protos --check    # exit 1 if the committed stubs differ from the .proto
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PROTO_FILES = ["embedder/v1/embedder.proto"]
GENERATED = ["embedder_pb2.py", "embedder_pb2.pyi", "embedder_pb2_grpc.py"]


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    for proto in PROTO_FILES:
        args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}", str(PROTOS / proto)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        drift = []
        for proto in PROTO_FILES:
            pkg = Path(proto).parent
            for name in GENERATED:
                fresh, committed = Path(tmp) / pkg / name, ROOT / pkg / name
                if args.check:
                    if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                        drift.append(str(committed.relative_to(ROOT)))
                else:
                    committed.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(fresh, committed)
            init = ROOT / pkg / "__init__.py"
            if not args.check and not init.exists():
                init.write_text('"""Generated gRPC stubs of protos/' + str(pkg) + ' (scripts/dev/gen_protos.py)."""\n')
    if drift:
        print("stubs out of date with protos/ (run python -m scripts.dev.gen_protos):", *drift, sep="\n  ")
        return 1
    print("stubs are up to date" if args.check else "stubs generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
