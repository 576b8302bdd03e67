"""Which vector build of mol's C++ kernels runs on this CPU: AVX2 and FMA (8 floats a vector) or AVX-512F
(16), for the kernels written against ``simd.h``.

The AVX-512 build is chosen where torch reports an AVX-512 CPU; the environment variable
``MOL_CPU_ISA=avx2`` chooses the AVX2 build anyway (to compare the two, or to avoid AVX-512's clock
penalty on older CPUs).
"""

from __future__ import annotations

import os

import torch

__all__ = ["ISA_FLAGS", "LANES", "builds_here", "instruction_set"]

#: Extra compiler flags of each build (beside the kernels' own ``-mavx2 -mfma``).
ISA_FLAGS: dict[str, tuple[str, ...]] = {"avx2": (), "avx512": ("-mavx512f", "-DMOL_AVX512")}
#: Floats per vector of each build.
LANES: dict[str, int] = {"avx2": 8, "avx512": 16}


def instruction_set() -> str:
    """The build the kernels use here: ``"avx512"`` where torch reports an AVX-512 CPU, else ``"avx2"``;
    ``MOL_CPU_ISA=avx2`` chooses the AVX2 build anyway.

    Raises:
        ValueError: ``MOL_CPU_ISA`` is set to something other than ``avx2`` or ``avx512``, or asks for
            ``avx512`` on a CPU without it.
    """
    native = "avx512" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "avx2"
    asked = os.environ.get("MOL_CPU_ISA", "").strip().lower()
    if not asked:
        return native
    if asked not in ISA_FLAGS:
        raise ValueError(f"MOL_CPU_ISA must be one of {sorted(ISA_FLAGS)} or unset; got {asked!r}")
    if asked == "avx512" and native != "avx512":
        raise ValueError("MOL_CPU_ISA=avx512, but torch reports no AVX-512 on this CPU")
    return asked


def builds_here() -> list[str]:
    """Every build this CPU can run (``MOL_CPU_ISA`` aside): ``["avx2"]``, plus ``"avx512"`` where torch
    reports AVX-512."""
    return ["avx2"] + (["avx512"] if torch.backends.cpu.get_cpu_capability() == "AVX512" else [])
