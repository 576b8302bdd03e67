"""``mol-index``: build, search and inspect index artifacts from the command line.

    mol-index build OUT --items items.safetensors --similarity-config sim.json \
        --similarity-state sim.safetensors --kind faiss-hnsw
    mol-index search OUT --queries queries.safetensors -k 10 --algorithm comb_topk --k-prime 64
    mol-index info OUT

    mol-index build OUT --bundle artifacts/bundle --kind exact
    mol-index build OUT --bundle artifacts/bundle --kind pq            # the bundle's trained PQ layer
    mol-index build OUT --bundle artifacts/bundle --kind hierarchical  # or its trained clusters
    mol-index build OUT --bundle artifacts/bundle --kind adaptive --train-histories ratings.txt

Arrays are ``.npy`` files or ``.safetensors`` files (tensor names below); ``--bundle`` takes the item side,
ids and similarity from a mol-train model bundle instead. The benchmarks are scripts in
``packages/mol-index/benchmarks/`` (not part of the installed package).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from google.protobuf import json_format
from safetensors.torch import load_file

from mol_core.errors import ConfigError, MolError
from mol_core.manifest import INDEX_FORMAT_VERSION, MANIFEST_FILENAME, read_manifest
from mol_core.proto.mol.v1 import manifest_pb2, similarity_pb2
from mol_core.similarity import ItemSide, QuerySide, similarity_from_config
from mol_index._inputs import read_array, read_tensors
from mol_index.factory import build_adaptive, build_from_bundle, build_hierarchical, build_pq
from mol_index.index import MolIndex
from mol_index.params import SearchParams
from mol_index.search.candidates import STAGE_KINDS
from mol_index.search.rails import Algorithm
from mol_index.sharding import SHARD_SET_FILE, ShardedIndex

__all__ = ["main"]


#: ``--kind`` -> the candidate stage ``MolIndex.build`` takes (learned kinds start from an exact index).
_KIND_STAGES = {
    "exact": "torch",
    "faiss-flat": "flat",
    "faiss-ivf": "ivf",
    "faiss-hnsw": "hnsw",
    "pq": "torch",
    "hierarchical": "torch",
    "adaptive": "torch",
}
#: The older ``--stage`` names.
_STAGE_KINDS = {
    "torch": "exact",
    "flat": "faiss-flat",
    "ivf": "faiss-ivf",
    "hnsw": "faiss-hnsw",
    "adaptive": "adaptive",
}


def _build(args: argparse.Namespace) -> int:
    if args.kind is not None and args.stage is not None:
        raise ConfigError("give --kind or its older spelling --stage, not both")
    kind = args.kind or _STAGE_KINDS[args.stage or "torch"]
    stage = _KIND_STAGES[kind]
    whole_stage = "torch" if args.shards != 1 else stage  # shards build their own stage
    if args.shards != 1 and kind in ("pq", "hierarchical", "adaptive"):
        raise ConfigError(
            f"a {kind!r} index is fitted on its whole corpus and cannot be sharded; --shards takes exact "
            "and faiss-* kinds"
        )
    if kind == "adaptive" and (args.bundle is None or args.train_histories is None):
        raise ConfigError(
            "--kind adaptive needs --bundle and --train-histories (the training queries run through the "
            "bundle's encoder)"
        )
    if args.bundle is not None:
        if args.items is not None or args.similarity_config is not None:
            raise ConfigError("--bundle replaces --items and --similarity-config; give one or the other")
        index = build_from_bundle(
            args.bundle,
            stage=whole_stage,
            nlist=args.nlist,
            hnsw_m=args.hnsw_m,
            ef_construction=args.ef_construction,
            exact_mean=not args.approximate_mean,
            linearized=args.linearized,
        )
        if kind == "adaptive":
            index = _adaptive_from_bundle(index, args)
        elif kind in ("pq", "hierarchical"):
            index = _learned(index, kind, args)
        if args.shards != 1:
            return _save_shards(index, stage, args)
        path = index.save(args.output, overwrite=args.overwrite)
        print(f"built {index.kind} index of {index.num_items} items from bundle {args.bundle} at {path}")
        return 0
    if args.items is None or args.similarity_config is None:
        raise ConfigError("mol-index build needs --bundle, or --items and --similarity-config")
    try:
        config = json_format.Parse(args.similarity_config.read_text(), similarity_pb2.SimilarityConfig())
    except (OSError, json_format.ParseError) as err:
        raise ConfigError(
            f"--similarity-config {args.similarity_config}: not a SimilarityConfig JSON: {err}"
        ) from err
    similarity = similarity_from_config(config, None)
    if args.similarity_state is not None:
        similarity.load_state_dict(load_file(str(args.similarity_state)))
    elif config.WhichOneof("kind") == "mixture_of_logits":
        raise ConfigError("--similarity-state is required for a MoL similarity: it holds the gating MLPs")
    bundle = read_tensors(args.items) if args.items.suffix == ".safetensors" else {}
    embeddings = read_array(None if bundle else args.items, "item_embeddings", bundle)
    if embeddings is None:
        raise ConfigError(f"{args.items} has no tensor named 'item_embeddings'")
    gating = read_array(args.gating, "item_gating", bundle)
    ids = read_array(args.ids, "item_ids", bundle)
    if ids is None:
        ids = torch.arange(embeddings.shape[0])
    items: ItemSide | torch.Tensor = (
        embeddings.float()
        if embeddings.dim() == 2
        else ItemSide(embeddings.float(), None if gating is None else gating.float())
    )
    index = MolIndex.build(
        similarity,
        ids,
        items,
        stage=whole_stage,
        nlist=args.nlist,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        exact_mean=not args.approximate_mean,
        linearized=args.linearized,
    )
    if kind in ("pq", "hierarchical"):
        index = _learned(index, kind, args)
    if args.shards != 1:
        return _save_shards(index, stage, args)
    path = index.save(args.output, overwrite=args.overwrite)
    print(f"built {index.kind} index of {index.num_items} items at {path}")
    return 0


def _save_shards(index: MolIndex, stage: str, args: argparse.Namespace) -> int:
    """Splits ``index`` into ``--shards`` shards of the same kind and writes the shard set."""
    options = {"nlist": args.nlist, "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}
    if stage != "torch":
        options["linearized"] = args.linearized  # each FAISS shard builds its own concatenated index
    sharded = ShardedIndex.from_index(
        index, args.shards, stage=stage, exact_mean=not args.approximate_mean, **options
    )
    path = sharded.save(args.output, overwrite=args.overwrite)
    sizes = ", ".join(str(shard.num_items) for shard in sharded.shards)
    print(
        f"built {len(sharded.shards)} {index.kind} shards ({sizes} items) at {path}, "
        f"version {sharded.version}"
    )
    return 0


def _learned(index: MolIndex, kind: str, args: argparse.Namespace) -> MolIndex:
    """A ``pq`` or ``hierarchical`` index: from the bundle's jointly trained layer when it has one (and
    ``--refit`` is not given), else fitted by k-means on the items."""
    layer = None
    if args.bundle is not None and not args.refit:
        from mol_index.layers import layer_from_bundle

        layer = layer_from_bundle(args.bundle, index.similarity)
        if layer is not None and layer.kind != kind:
            raise ConfigError(
                f"{args.bundle} carries a jointly trained {layer.kind!r} index layer, not a {kind!r} one: "
                f"build --kind {layer.kind}, or pass --refit to fit a {kind} index by k-means instead"
            )
    source = "the bundle's trained layer (no k-means)" if layer is not None else "k-means on the items"
    print(f"building the {kind} index from {source}")
    if kind == "pq":
        if layer is not None:
            return build_pq(index, layer=layer)  # type: ignore[arg-type]
        return build_pq(
            index, coarse=args.pq_coarse, subspaces=args.pq_subspaces, codebook_size=args.pq_codebook_size
        )
    if layer is not None:
        return build_hierarchical(index, layer=layer)
    return build_hierarchical(index, branching=_branching(args.branching))


def _branching(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--branching must be comma-separated integers, e.g. 32,16; got {text!r}") from None
    return levels


def _adaptive_from_bundle(index: MolIndex, args: argparse.Namespace) -> MolIndex:
    """The adaptive index over a bundle's items, trained on the histories of ``--train-histories``."""
    from mol_core.bundle import load_bundle
    from mol_index.evaluation import read_histories

    bundle = load_bundle(args.bundle)
    known = set(bundle.item_ids)
    histories = [[i for i in h if i in known] for h in read_histories(args.train_histories, args.train_users)]
    histories = [h for h in histories if h]
    if not histories:
        raise ConfigError(f"{args.train_histories}: no history with an item of the bundle's vocabulary")
    with torch.inference_mode():
        parts = [bundle.encode(histories[i : i + 512]) for i in range(0, len(histories), 512)]
    gating = None if parts[0].gating is None else torch.cat([q.gating for q in parts if q.gating is not None])
    queries = QuerySide(torch.cat([q.embeddings for q in parts]), gating)
    print(f"training the adaptive model on {queries.batch_size} queries x {args.per_query} scored items")
    return build_adaptive(index, queries, per_query=args.per_query, reg=args.reg)


def _search(args: argparse.Namespace) -> int:
    sharded = ShardedIndex.load(args.index) if (args.index / SHARD_SET_FILE).is_file() else None
    index = None if sharded is not None else MolIndex.load(args.index)
    found = read_tensors(args.queries)
    embeddings = found.get("", found.get("query_embeddings"))
    if embeddings is None:
        raise ConfigError(f"{args.queries} has no tensor named 'query_embeddings'")
    gating = read_array(args.gating, "query_gating", found)
    queries: QuerySide | torch.Tensor = embeddings.float()
    if embeddings.dim() == 3:
        queries = QuerySide(embeddings.float(), None if gating is None else gating.float())
    exclude = None
    if args.exclude is not None:
        exclude = read_array(args.exclude, "exclude", {})
    params = SearchParams(
        algorithm=Algorithm(args.algorithm),
        k_prime=args.k_prime,
        k_prime_avg=args.k_prime_avg,
        guarantee_exact=args.guarantee_exact,
        nprobe=args.nprobe,
        early_nprobe=args.early_nprobe,
        ef_search=args.ef_search,
        budget=args.budget,
        rounds=args.rounds,
        beam=args.beam,
        rerank=args.rerank,
    )
    if sharded is not None:
        scores, ids = sharded.search(queries, args.k, exclude=exclude, params=params)
        for row in range(ids.shape[0]):
            line = {
                "query": row,
                "ids": ids[row].tolist(),
                "scores": [round(float(s), 6) for s in scores[row]],
            }
            print(json.dumps(line))
        return 0
    assert index is not None
    res = index.search_with_info(queries, args.k, exclude=exclude, params=params)
    for row in range(res.ids.shape[0]):
        print(
            json.dumps(
                {
                    "query": row,
                    "ids": res.ids[row].tolist(),
                    "scores": [round(float(s), 6) for s in res.scores[row]],
                    "exact": bool(res.exact[row]),
                    "candidates": int(res.num_candidates[row]),
                }
            )
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    if (args.index / SHARD_SET_FILE).is_file():
        print((args.index / SHARD_SET_FILE).read_text())
        if args.verify:
            ShardedIndex.load(args.index)
            print("verified: every shard matches the shard set and loads")
        return 0
    manifest = read_manifest(args.index / MANIFEST_FILENAME, manifest_pb2.IndexManifest, INDEX_FORMAT_VERSION)
    print(json_format.MessageToJson(manifest, preserving_proto_field_name=True, indent=2, sort_keys=True))
    if args.verify:
        MolIndex.load(args.index)
        print("verified: every file matches its checksum and the index loads")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mol-index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch and FAISS threads (default 0: MOL_THREADS, else the CPUs this process may use)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build an index artifact from item arrays")
    build.add_argument("output", type=Path, help="index directory to create (its parent must exist)")
    build.add_argument(
        "--bundle",
        type=Path,
        help="a mol-train model bundle directory: its items, integer vocabulary ids and similarity "
        "(instead of --items and --similarity-config)",
    )
    build.add_argument(
        "--items",
        type=Path,
        help="item side: .safetensors with item_embeddings (N, Px, d) [item_gating (N, P), "
        "item_ids (N,)], or a .npy of (N, Px, d) embeddings, or (N, d) vectors for a "
        "dot product",
    )
    build.add_argument("--gating", type=Path, help="(N, P) item gating features (.npy) if not in --items")
    build.add_argument("--ids", type=Path, help="(N,) int64 external item ids (.npy); default 0..N-1")
    build.add_argument(
        "--similarity-config",
        type=Path,
        help="mol.v1.SimilarityConfig as protobuf JSON (e.g. the similarity of a bundle manifest)",
    )
    build.add_argument(
        "--similarity-state",
        type=Path,
        help="the similarity module's state dict (.safetensors); required for MoL",
    )
    build.add_argument(
        "--kind",
        choices=list(_KIND_STAGES),
        help="index kind: exact (RAILS with the torch GEMM stage, no extra files; the default), faiss-flat, "
        "faiss-ivf, faiss-hnsw (RAILS with that FAISS stage), pq (Poeem codes: the bundle's jointly trained "
        "PQ layer, else k-means), hierarchical (HSNN clusters: the bundle's trained layer, else top-down "
        "k-means), adaptive (AXN: needs --bundle and --train-histories)",
    )
    build.add_argument(
        "--stage",
        choices=[*STAGE_KINDS, "adaptive"],
        help="the older spelling of --kind: torch = exact, flat/ivf/hnsw = faiss-*, adaptive",
    )
    build.add_argument(
        "--refit",
        action="store_true",
        help="pq / hierarchical: ignore the bundle's trained index layer and fit by k-means",
    )
    build.add_argument("--pq-coarse", type=int, default=1, help="pq by k-means: coarse centroids (1)")
    build.add_argument("--pq-subspaces", type=int, default=8, help="pq by k-means: subspaces M (8)")
    build.add_argument(
        "--pq-codebook-size", type=int, default=256, help="pq by k-means: codewords per subspace (256)"
    )
    build.add_argument(
        "--branching", default="16,8", help="hierarchical by k-means: clusters per level (default 16,8)"
    )
    build.add_argument(
        "--train-histories",
        type=Path,
        help="adaptive: 'user item' per line chronological file whose users' histories are the training "
        "queries",
    )
    build.add_argument("--train-users", type=int, default=2000, help="adaptive: training users (2000)")
    build.add_argument("--per-query", type=int, default=100, help="adaptive: scored items per query (100)")
    build.add_argument("--reg", type=float, default=1000.0, help="adaptive: ridge strength (1000)")
    build.add_argument("--nlist", type=int, help="IVF lists (default 4 sqrt(N), at most N / 39)")
    build.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node (default 32)")
    build.add_argument("--ef-construction", type=int, default=200, help="HNSW build beam width (default 200)")
    build.add_argument(
        "--approximate-mean",
        action="store_true",
        help="faiss-ivf / faiss-hnsw: index the mean item embeddings (the TopKAvg search) with the same "
        "kind instead of an exact IndexFlatIP",
    )
    build.add_argument(
        "--linearized",
        action="store_true",
        help="faiss-flat / faiss-ivf / faiss-hnsw: also index the concatenated item components, for "
        "--algorithm linearized",
    )
    build.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split the corpus into S shard artifacts by splitmix64(id) mod S (exact and faiss kinds; "
        "writes a shard-set folder with shards.json)",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    build.set_defaults(run=_build)

    search = sub.add_parser("search", help="search an index; prints one JSON line per query")
    search.add_argument("index", type=Path, help="index directory")
    search.add_argument(
        "--queries",
        type=Path,
        required=True,
        help=".safetensors with query_embeddings (B, Pq, d) [query_gating (B, P)], or a .npy "
        "of (B, Pq, d) embeddings or (B, d) vectors for a dot product",
    )
    search.add_argument("--gating", type=Path, help="(B, P) query gating features (.npy) if not in --queries")
    search.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    search.add_argument("--exclude", type=Path, help="(B, L) int64 item ids to exclude (.npy), -1 padded")
    search.add_argument(
        "--algorithm",
        choices=[a.value for a in Algorithm],
        default="comb_topk",
        help="exact, a RAILS algorithm (default comb_topk), linearized (exact indexes and indexes built "
        "with --linearized), or adaptive / pq / hierarchical (indexes of that kind)",
    )
    search.add_argument("--beam", type=int, default=8, help="hierarchical: clusters kept per level (8)")
    search.add_argument(
        "--rerank",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pq: rerank the scan's candidates by exact MoL on the unquantized items (default: yes for "
        "codes fitted after training, no for codes of a jointly trained layer)",
    )
    search.add_argument("--budget", type=int, help="adaptive: scorer calls per query (default max(k, 200))")
    search.add_argument("--rounds", type=int, default=5, help="adaptive, linearized: rounds (default 5)")
    search.add_argument(
        "--k-prime", type=int, default=64, help="K', candidates per component pair (default 64)"
    )
    search.add_argument(
        "--k-prime-avg",
        type=int,
        help="candidates of the TopKAvg part of topk_avg / comb_topk (default: --k-prime)",
    )
    search.add_argument(
        "--guarantee-exact",
        action="store_true",
        help="widen K' until every result is provably exact (torch / flat indexes)",
    )
    search.add_argument(
        "--nprobe",
        type=int,
        help="IVF lists to visit (faiss-ivf indexes; default max(8, sqrt(nlist) / 2))",
    )
    search.add_argument(
        "--early-nprobe",
        type=int,
        help="linearized: IVF lists visited by every round but the last (default: as the last round)",
    )
    search.add_argument("--ef-search", type=int, help="HNSW beam width (faiss-hnsw indexes)")
    search.set_defaults(run=_search)

    info = sub.add_parser("info", help="print an index's manifest")
    info.add_argument("index", type=Path, help="index directory")
    info.add_argument("--verify", action="store_true", help="also check every checksum and load the index")
    info.set_defaults(run=_info)
    return parser


def _set_threads(threads: int) -> int:
    """torch's and FAISS's thread counts (:func:`mol_core.threads.resolve_threads`); returns the count."""
    import faiss
    import torch

    from mol_core.threads import resolve_threads

    count = resolve_threads(threads)
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    return count


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code: 0 ok, 2 bad arguments or input (a config, a file, an
    artifact), as every mol CLI (docs/operations.md)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _set_threads(args.threads)
        code: int = args.run(args)
    except MolError as err:  # ConfigError, ShapeError, ArtifactError: input the user must fix
        print(f"mol-index: error: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
