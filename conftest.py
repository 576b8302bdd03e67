"""pytest setup shared by every package's tests (this file sits at the repository root, the rootdir).

Triton decides at decoration time whether a kernel runs compiled or interpreted, so TRITON_INTERPRET must
be set before any test imports a kernel module; on a machine without an NVIDIA driver the Triton kernels
are checked under the interpreter.
"""

from __future__ import annotations

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
