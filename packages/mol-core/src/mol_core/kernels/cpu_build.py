"""Compiles a C++ source shipped with a mol package into a shared library once, caches it, and loads it.

The library is built on first use with the system's C++ compiler (``$CXX``, else ``c++``) and these flags
only (plus ``-I`` for the folders of the headers it includes); no Python headers and no torch headers are
needed, so a build takes a second or two. The file is named by a hash of the source, its headers, the
flags and the compiler's version, and lives in ``$MOL_KERNEL_CACHE``,
else ``$XDG_CACHE_HOME/mol/kernels``, else ``~/.cache/mol/kernels``; it is compiled in a temporary folder
and moved into the cache with :func:`mol_core.atomic.atomic_open`, so concurrent first uses and crashes
leave either no library or a whole one.

A build that cannot run (no compiler, a compiler error, a cache folder that cannot be written) raises
:class:`KernelUnavailable` with the reason; callers fall back to the torch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mol_core.atomic import atomic_open

__all__ = ["KernelUnavailable", "cache_dir", "load_library"]

_COMPILE_TIMEOUT_S = 300


class KernelUnavailable(RuntimeError):
    """A compiled kernel cannot be built or loaded here; the message says why."""


def cache_dir() -> Path:
    """The folder for compiled kernels (see the module docstring)."""
    explicit = os.environ.get("MOL_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mol" / "kernels"


def _compiler_version(compiler: str) -> str:
    try:
        done = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as error:
        raise KernelUnavailable(f"the C++ compiler {compiler!r} cannot run: {error}") from error
    if done.returncode != 0:
        raise KernelUnavailable(f"`{compiler} --version` failed: {done.stderr.strip()[-500:]}")
    return done.stdout


@functools.cache
def load_library(source: Path, flags: tuple[str, ...], headers: tuple[Path, ...] = ()) -> ctypes.CDLL:
    """The shared library built from ``source`` with ``flags`` (compiled and cached on first use);
    ``headers`` are the files ``source`` includes from other folders (found through ``-I``, and part of
    the cache key).

    Raises:
        KernelUnavailable: no compiler, the compile failed, or the library does not load.
    """
    compiler = os.environ.get("CXX") or "c++"
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C++ compiler: {compiler!r} is not on PATH (set CXX to choose one)")
    code = source.read_bytes() + b"".join(header.read_bytes() for header in headers)
    flags = (*flags, *dict.fromkeys(f"-I{header.parent}" for header in headers))
    digest = hashlib.sha256(code + "\0".join(flags).encode() + _compiler_version(compiler).encode())
    target = cache_dir() / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="mol-kernel-") as scratch:
                built = Path(scratch) / target.name
                command = [compiler, *flags, "-shared", "-fPIC", str(source), "-o", str(built)]
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False
                )
                if done.returncode != 0:
                    raise KernelUnavailable(
                        f"compiling {source.name} failed ({' '.join(command)}): {done.stderr.strip()[-2000:]}"
                    )
                with atomic_open(target, mode=0o755) as handle:
                    handle.write(built.read_bytes())
        except (OSError, subprocess.TimeoutExpired) as error:
            raise KernelUnavailable(f"building {source.name} into {target.parent} failed: {error}") from error
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        raise KernelUnavailable(f"loading {target} failed: {error}") from error
