"""Runs every benchmark of the workspace: packages/*/benchmarks/bench_*.py.

    python tools/run_benchmarks.py            # quick mode (what CI runs)
    python tools/run_benchmarks.py --full     # full mode, for the numbers recorded in docs/benchmarks.md
    python tools/run_benchmarks.py -k scoring # only benchmarks whose file name contains "scoring"

Each benchmark prints its own table and writes ``bench-results/<name>.json`` (``--results`` changes the
folder). The run fails if any benchmark fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="full mode (default: quick mode)")
    parser.add_argument("-k", dest="pattern", default="", help="run only benchmarks whose name contains this")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench-results", help="folder for the JSON files"
    )
    args = parser.parse_args(argv)

    scripts = sorted(p for p in ROOT.glob("packages/*/benchmarks/bench_*.py") if args.pattern in p.stem)
    if not scripts:
        print(f"no benchmark matches {args.pattern!r}", file=sys.stderr)
        return 2
    summary = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        cmd = [sys.executable, str(script), "--output", str(args.results / f"{name}.json")]
        if not args.full:
            cmd.append("--quick")
        print(f"\n== {script.relative_to(ROOT)} ({'full' if args.full else 'quick'})", flush=True)
        start = time.perf_counter()
        code = subprocess.run(cmd, check=False).returncode
        summary.append((name, code, time.perf_counter() - start))
    print("\nbenchmark                 status  seconds")
    for name, code, seconds in summary:
        print(f"{name:<25} {'ok' if code == 0 else f'FAIL({code})':<7} {seconds:7.1f}")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
