"""Runs every benchmark of the workspace: packages/*/benchmarks/bench_*.py.

    python tools/run_benchmarks.py            # quick mode (what CI runs)
    python tools/run_benchmarks.py --full     # full mode, for the numbers recorded in docs/benchmarks.md
    python tools/run_benchmarks.py -k scoring # only benchmarks whose file name contains "scoring"

Each benchmark prints its own table and writes ``bench-results/<name>.json`` (``--results`` changes the
folder). The run fails if any benchmark fails.

Full mode also checks the targets the benchmarks carry (e.g. issue #15's in ``bench_exact_kernels.py``).
The approximate-search record needs a trained model bundle, which the repository does not ship: with
``MOL_BENCH_BUNDLE=BUNDLE_DIR`` in the environment, full mode runs ``bench_mol_index.py --record
BUNDLE_DIR`` (the N = 1e6 record of docs/mol-index.md, with its target check) instead of its synthetic
default, and says so when the variable is unset.

Quick mode runs every benchmark with one intra-op thread (``OMP_NUM_THREADS=1`` unless the environment
sets it): it checks that the benchmarks run and that their assertions hold, and on a shared 2-core
machine two OpenMP threads per process were measured up to 100x slower than one while another process
kept a core busy (the mol-core scoring benchmark fell from about 5 to 0.05 M pairs/s), which made its
speedup assertion fail for reasons that have nothing to do with the code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Full-mode arguments taken from the environment: benchmark -> (variable, flag that takes its value).
FULL_MODE_FROM_ENV = {"mol_index": ("MOL_BENCH_BUNDLE", "--record")}


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
        elif name in FULL_MODE_FROM_ENV:
            variable, flag = FULL_MODE_FROM_ENV[name]
            if os.environ.get(variable):
                cmd += [flag, os.environ[variable]]
            else:
                print(f"({variable} is not set: {script.name} runs without {flag})", flush=True)
        print(f"\n== {script.relative_to(ROOT)} ({'full' if args.full else 'quick'})", flush=True)
        start = time.perf_counter()
        env = dict(os.environ)
        if not args.full:
            env.setdefault("OMP_NUM_THREADS", "1")
            env.setdefault("MKL_NUM_THREADS", "1")
        code = subprocess.run(cmd, check=False, env=env).returncode
        summary.append((name, code, time.perf_counter() - start))
    print("\nbenchmark                 status  seconds")
    for name, code, seconds in summary:
        print(f"{name:<25} {'ok' if code == 0 else f'FAIL({code})':<7} {seconds:7.1f}")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
