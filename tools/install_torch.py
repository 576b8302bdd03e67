"""Installs torch into the running Python without ever pulling a CUDA build onto a CPU machine.

    python tools/install_torch.py            # CPU build (the default)
    python tools/install_torch.py --gpu      # CUDA build from the default index, for GPU machines
    python tools/install_torch.py --torchrec # also fbgemm-gpu-cpu (or fbgemm-gpu with --gpu) and torchrec

torch on the default package index is the CUDA build, with several GB of NVIDIA libraries. On a CPU
machine this script asks pip which torch it *would* install (``pip install --dry-run --report``) and
refuses unless it is a CPU build (local version label ``+cpu``). Point pip at a CPU build with one of:

- ``MOL_TORCH_FIND_LINKS``: a folder (or URL of a page) holding the CPU wheel, passed as ``--find-links``;
- pip's own configuration: ``PIP_FIND_LINKS``, ``PIP_EXTRA_INDEX_URL`` (PyTorch's CPU wheel index), or
  the same keys in ``pip config``.

Nothing about the wheel's location is written in this repository: it comes from the environment at run
time. If a matching torch is already installed, nothing is downloaded.

``--torchrec`` adds the TorchRec stack that mol-train needs. torchrec declares a dependency on
``fbgemm-gpu`` (the CUDA build), so it is installed with ``--no-deps`` after its other dependencies and
after the fbgemm build that matches the machine: ``fbgemm-gpu-cpu`` on CPU, ``fbgemm-gpu`` with ``--gpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata

#: The torch release mol is tested with (fbgemm-gpu 1.8 / torchrec 1.8 pair with torch 2.13).
TORCH_VERSION = "2.13.0"
#: fbgemm 1.X pairs with torch 2.(X+5); torchrec moves with fbgemm.
FBGEMM_VERSION = "1.8.0"
TORCHREC_VERSION = "1.8.0"
#: torchrec's declared dependencies other than fbgemm-gpu (from its 1.8.0 metadata).
TORCHREC_DEPENDENCIES = ["tensordict", "torchmetrics==1.0.3", "tqdm", "pyre-extensions"]


def installed_torch() -> str | None:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def pip_args(find_links: str | None) -> list[str]:
    return ["--find-links", find_links] if find_links else []


def planned_torch(spec: str, find_links: str | None) -> tuple[str, str]:
    """The (version, download URL) of the torch pip would install for ``spec``, without installing it."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", spec]
    done = subprocess.run(cmd + pip_args(find_links), check=True, capture_output=True, text=True)
    report = json.loads(done.stdout)
    for item in report.get("install", []):
        if item["metadata"]["name"].lower() == "torch":
            return item["metadata"]["version"], item["download_info"]["url"]
    raise SystemExit(f"pip's report for {spec!r} names no torch to install:\n{done.stdout[:2000]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true", help="install the CUDA build from the default index")
    parser.add_argument("--version", default=TORCH_VERSION, help=f"torch version (default {TORCH_VERSION})")
    parser.add_argument(
        "--torchrec",
        action="store_true",
        help=f"also install fbgemm {FBGEMM_VERSION} (CPU or CUDA build) and torchrec {TORCHREC_VERSION}",
    )
    args = parser.parse_args(argv)
    code = install_torch(args.version, gpu=args.gpu)
    if code == 0 and args.torchrec:
        install_torchrec(gpu=args.gpu)
    return code


def install_torchrec(*, gpu: bool) -> None:
    """Installs fbgemm (the build matching ``gpu``) and torchrec without its CUDA fbgemm dependency."""
    fbgemm = f"fbgemm-gpu=={FBGEMM_VERSION}" if gpu else f"fbgemm-gpu-cpu=={FBGEMM_VERSION}"
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, fbgemm, *TORCHREC_DEPENDENCIES], check=True)
    subprocess.run([*pip, "--no-deps", f"torchrec=={TORCHREC_VERSION}"], check=True)
    print(f"installed {fbgemm} and torchrec=={TORCHREC_VERSION}")


def install_torch(version: str, *, gpu: bool) -> int:
    """Installs torch ``version``; on CPU Linux only a ``+cpu`` build. Returns an exit code."""

    have = installed_torch()
    if have is not None and have.split("+")[0] == version and (gpu or not _is_cuda_build(have)):
        print(f"torch {have} is already installed")
        return 0

    spec = f"torch=={version}"
    find_links = os.environ.get("MOL_TORCH_FIND_LINKS") or None
    if not gpu and sys.platform.startswith("linux"):
        version, url = planned_torch(spec, find_links)
        if "+cpu" not in version:
            print(
                f"Refusing to install torch {version} from {url}:\n"
                "on Linux that is the CUDA build (several GB).\n"
                "Make a CPU build visible to pip first, for example:\n"
                "  export MOL_TORCH_FIND_LINKS=/path/to/folder/with/the/cpu/wheel\n"
                "  or export PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index>\n"
                "or pass --gpu on a machine with a CUDA GPU. See docs/install.md.",
                file=sys.stderr,
            )
            return 2
        print(f"installing torch {version} (CPU build)")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", spec, *pip_args(find_links)]
    subprocess.run(cmd, check=True)
    print(f"installed torch {installed_torch()}")
    return 0


def _is_cuda_build(version: str) -> bool:
    return "+cu" in version or (sys.platform.startswith("linux") and "+" not in version)


if __name__ == "__main__":
    raise SystemExit(main())
