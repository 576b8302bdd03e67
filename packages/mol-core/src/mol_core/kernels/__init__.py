"""mol's compiled CPU kernels: the build helper and what the C++ sources share.

- :mod:`mol_core.kernels.cpu_build`: compiles a C++ source on first use, caches and loads the library;
- :mod:`mol_core.kernels.isa`: which vector build (AVX2 or AVX-512) runs on this CPU;
- ``avx2_math.h``: vector exp, sigmoid, SiLU and reductions for AVX2 and FMA (:data:`AVX2_MATH`), included
  by mol-index's exact top-k kernel;
- ``simd.h``: the same functions over a vector width chosen at build time, AVX2 (8 floats) or AVX-512F (16
  floats, ``-DMOL_AVX512``) (:data:`SIMD`; it includes ``avx2_math.h``), used by ``gating_train.cpp``, the
  training kernel of :mod:`mol_core.similarity.gating_cpp`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AVX2_MATH", "SIMD"]

#: The shared header of the AVX2 kernels (pass it to :func:`~mol_core.kernels.cpu_build.load_library`).
AVX2_MATH = Path(__file__).with_name("avx2_math.h")
#: The width-generic vector header (pass it with :data:`AVX2_MATH`, which it includes).
SIMD = Path(__file__).with_name("simd.h")
