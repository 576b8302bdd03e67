"""HSNN hierarchical index against exact search and RAILS CombTopK (recall, scored items, latency).

    python packages/mol-index/benchmarks/bench_mol_index_hierarchical.py --quick --output bench-results/h.json
    python packages/mol-index/benchmarks/bench_mol_index_hierarchical.py --output bench-results/h.json \
        --plot docs/img/hierarchical_cost_vs_n.png  # full: N = 1e5 and 1e6

See mol_index.bench_hierarchical for what is measured. Exit status 1 when a sanity check fails.
"""

from __future__ import annotations

from mol_index.bench_hierarchical import main

if __name__ == "__main__":
    raise SystemExit(main())
