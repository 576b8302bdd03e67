"""Adaptive retrieval (AXN) against dual-encoder retrieve-and-rerank at equal scorer-call budgets.

    python packages/mol-index/benchmarks/bench_mol_index_adaptive.py --quick --output bench-results/a.json
    python packages/mol-index/benchmarks/bench_mol_index_adaptive.py --output bench-results/a.json  # full

See mol_index.bench_adaptive for what is measured. Exit status 1 when a method exceeded its budget.
"""

from __future__ import annotations

from mol_index.bench_adaptive import main

if __name__ == "__main__":
    raise SystemExit(main())
