"""Recall and latency of exact and RAILS MoL top-k on synthetic clustered corpora; see mol_index.bench.

    python packages/mol-index/benchmarks/bench_mol_index.py --quick --output bench-results/mol_index.json
    python packages/mol-index/benchmarks/bench_mol_index.py --output bench-results/mol_index.json \
        --plot docs/img/mol_index_recall_latency.png          # full: N = 1e4, 1e5, 1e6

The same benchmark runs as ``mol-index bench``. Exit status 1 when a result the bound proved exact (or an
exact-guaranteed search) differs from exact search.
"""

from __future__ import annotations

from mol_index.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
