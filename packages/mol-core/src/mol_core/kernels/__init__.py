"""mol's compiled CPU kernels: the build helper and what the C++ sources share.

- :mod:`mol_core.kernels.cpu_build`: compiles a C++ source on first use, caches and loads the library;
- ``avx2_math.h``: vector exp, sigmoid, SiLU and reductions for AVX2 and FMA (:data:`AVX2_MATH`), included
  by mol-index's exact top-k kernel and by ``gating_train.cpp``, the training kernel of
  :mod:`mol_core.similarity.gating_cpp`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AVX2_MATH"]

#: The shared header of the AVX2 kernels (pass it to :func:`~mol_core.kernels.cpu_build.load_library`).
AVX2_MATH = Path(__file__).with_name("avx2_math.h")
