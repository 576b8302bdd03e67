"""Search algorithms over tensors: exact top-k, RAILS with candidate stages, PQ, the cluster hierarchy, AXN.

The index classes (:mod:`mol_index.index`) hold a corpus and call these; they are public for callers
that keep their own tensors.
"""
