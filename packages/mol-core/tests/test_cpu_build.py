"""The compile-and-cache helper of mol's C++ kernels (mol_core.kernels.cpu_build) and the choice of their
vector build (mol_core.kernels.isa)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from mol_core.kernels.cpu_build import KernelUnavailable, load_library
from mol_core.kernels.isa import builds_here, instruction_set

has_compiler = shutil.which(os.environ.get("CXX") or "c++") is not None


def test_build_helper_compiles_caches_and_names_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOL_KERNEL_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "answer.cpp"
    good.write_text('extern "C" int answer() { return 42; }\n')
    if not has_compiler:
        with pytest.raises(KernelUnavailable, match="compiler"):
            load_library(good, ("-O1",))
        return
    lib = load_library(good, ("-O1",))
    assert lib.answer() == 42
    built = list((tmp_path / "cache").glob("answer-*.so"))
    assert len(built) == 1  # one library, no temporary left behind
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    with pytest.raises(KernelUnavailable, match=r"compiling broken\.cpp failed"):
        load_library(bad, ("-O1",))
    assert not list((tmp_path / "cache").glob("broken-*"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(KernelUnavailable, match="no C\\+\\+ compiler"):
        load_library(good, ("-O2",))


@pytest.mark.skipif(not has_compiler, reason="no C++ compiler")
def test_a_header_from_another_folder_is_found_and_keys_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOL_KERNEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "include").mkdir()
    header = tmp_path / "include" / "value.h"
    source = tmp_path / "uses_header.cpp"
    source.write_text('#include "value.h"\nextern "C" int value() { return kValue; }\n')
    header.write_text("constexpr int kValue = 1;\n")
    assert load_library(source, ("-O1",), (header,)).value() == 1
    header.write_text("constexpr int kValue = 2;\n")  # same source and flags: only the header changed
    load_library.cache_clear()  # a process memoises what it loaded; a new one would look at the files
    assert load_library(source, ("-O1",), (header,)).value() == 2
    assert len(list((tmp_path / "cache").glob("uses_header-*.so"))) == 2


def test_instruction_set_follows_the_cpu_and_mol_cpu_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOL_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert instruction_set() == "avx512"
    assert builds_here() == ["avx2", "avx512"]
    monkeypatch.setenv("MOL_CPU_ISA", "AVX2")
    assert instruction_set() == "avx2"
    monkeypatch.setenv("MOL_CPU_ISA", "sse4")
    with pytest.raises(ValueError, match="MOL_CPU_ISA must be one of"):
        instruction_set()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.delenv("MOL_CPU_ISA")
    assert instruction_set() == "avx2"
    assert builds_here() == ["avx2"]
    monkeypatch.setenv("MOL_CPU_ISA", "avx512")
    with pytest.raises(ValueError, match="no AVX-512"):
        instruction_set()
