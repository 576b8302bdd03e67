"""Installs local mol packages with pip without letting pip pull torchrec's CUDA ``fbgemm-gpu``.

    python tools/install_torch.py --torchrec          # first: torch, fbgemm-gpu-cpu and torchrec
    python tools/pip_install.py --editable packages/mol-core packages/mol-train 'packages/mol-index[triton]'
    python tools/pip_install.py packages/mol-core packages/mol-train --with 'pytest>=8'

mol-train declares ``torchrec``, and torchrec declares ``fbgemm-gpu``, the CUDA build (several GB with its
NVIDIA libraries). uv replaces it with fbgemm-gpu-cpu through ``override-dependencies`` in the root
pyproject.toml. pip has no such mechanism (a constraint can narrow a requirement, not drop it), and it
resolves the requirements of an installed torchrec too, so a plain ``pip install packages/mol-train`` would
download the CUDA fbgemm-gpu next to an installed fbgemm-gpu-cpu. This script makes two pip runs:

1. the local packages that do not declare torchrec, the declared requirements (and chosen extras) of those
   that do, less torchrec and the local siblings, and the ``--with`` requirements: one resolver run;
2. the local packages that declare torchrec, with ``--no-deps``.

It refuses (exit 2) when a package declares torchrec and the installed torchrec does not match it: run
``tools/install_torch.py --torchrec`` first. Afterwards ``pip check`` reports only that torchrec requires
fbgemm-gpu, which is not installed (on purpose). See docs/install.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    try:
        import tomli as tomllib
    except ImportError as err:
        raise SystemExit("tools/pip_install.py needs Python 3.11+ or tomli (pip install tomli)") from err

#: The dependency that pip must not resolve (its metadata requires the CUDA fbgemm-gpu).
HELD_BACK = "torchrec"
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(?:==\s*([^;,\s]+))?")
_LOCAL = re.compile(r"^(.*?)(?:\[([^\]]*)\])?$")


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class LocalPackage:
    """A package folder given on the command line, with the extras asked for."""

    path: Path
    name: str
    extras: set[str]
    dependencies: list[str]
    optional: dict[str, list[str]]

    @classmethod
    def read(cls, spec: str) -> LocalPackage:
        match = _LOCAL.match(spec.strip())
        assert match is not None  # the pattern matches every string
        path = Path(match.group(1))
        pyproject = path / "pyproject.toml"
        if not pyproject.is_file():
            raise SystemExit(
                f"{spec!r}: no pyproject.toml in {path}; give a package folder such as packages/mol-core"
            )
        project = tomllib.loads(pyproject.read_text())["project"]
        extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
        optional = project.get("optional-dependencies", {})
        unknown = extras - set(optional)
        if unknown:
            raise SystemExit(
                f"{spec!r}: {project['name']} has no extra {sorted(unknown)}; it has {sorted(optional)}"
            )
        return cls(path, normalize(project["name"]), extras, project.get("dependencies", []), optional)

    def requirements(self) -> list[str]:
        """The declared requirements, with those of the chosen extras."""
        return [*self.dependencies, *(r for extra in sorted(self.extras) for r in self.optional[extra])]

    def spec(self, *, editable: bool) -> list[str]:
        extras = f"[{','.join(sorted(self.extras))}]" if self.extras else ""
        return (["-e"] if editable else []) + [f"{self.path}{extras}"]


def plan(specs: list[str], also: list[str], *, editable: bool) -> tuple[list[str], list[str], list[str]]:
    """The two pip argument lists (resolved run, ``--no-deps`` run) and the held-back requirements.

    Raises:
        SystemExit: a spec is not a package folder, names an unknown extra, or a package requires a mol
            sibling that is neither given nor installed.
    """
    packages = [LocalPackage.read(spec) for spec in specs]
    local = {p.name: p for p in packages}
    held_back: list[str] = []
    resolved: list[str] = []
    for package in packages:
        if not any(_name(r) == HELD_BACK for r in package.requirements()):
            continue
        for requirement in package.requirements():
            name = _name(requirement)
            if name == HELD_BACK:
                held_back.append(requirement)
            elif name in local:
                wanted = _REQUIREMENT.match(requirement)
                extras = (wanted.group(2) or "") if wanted else ""
                local[name].extras |= {e.strip() for e in extras.split(",") if e.strip()}
            elif name.startswith("mol-") and _installed(name) is None:
                raise SystemExit(
                    f"{package.name} requires {requirement!r}, a local package: give its folder too "
                    f"(packages/{name})"
                )
            else:
                resolved.append(requirement)
    no_deps = [p for p in packages if any(_name(r) == HELD_BACK for r in p.requirements())]
    first = [arg for p in packages if p not in no_deps for arg in p.spec(editable=editable)]
    second = [arg for p in no_deps for arg in p.spec(editable=editable)]
    return [*first, *resolved, *also], second, held_back


def _name(requirement: str) -> str:
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_held_back(requirements: list[str]) -> str | None:
    """Why the installed torchrec does not satisfy ``requirements`` (``==`` pins only), or ``None``."""
    have = _installed(HELD_BACK)
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        pin = match.group(3) if match else None
        if have is None or (pin is not None and have != pin):
            return (
                f"{requirement!r} is declared but torchrec {have or 'is not'} installed; pip would pull the "
                "CUDA fbgemm-gpu with it, so install it first: python tools/install_torch.py --torchrec"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "packages", nargs="+", help="package folders, optionally with extras: 'packages/mol-train[index]'"
    )
    parser.add_argument(
        "--editable", "-e", action="store_true", help="install the package folders in editable mode"
    )
    parser.add_argument(
        "--with",
        dest="also",
        action="append",
        default=[],
        metavar="REQ",
        help="another requirement for the first pip run (repeatable), e.g. --with 'pytest>=8'",
    )
    args = parser.parse_args(argv)
    first, second, held_back = plan(args.packages, args.also, editable=args.editable)
    problem = check_held_back(held_back)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    if first:
        subprocess.run([*pip, *first], check=True)
    if second:
        subprocess.run([*pip, "--no-deps", *second], check=True)
    print("installed " + " ".join([*args.packages, *args.also]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
