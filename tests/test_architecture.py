"""The package graph of docs/architecture.md, enforced on the sources and on the pyproject files.

1. **Declared imports.** Every import in a package's ``src/`` names something the package declares in its
   own pyproject.toml, where a standard installer (pip, uv) sees it: a sibling mol package or a
   third-party distribution. A module-level import must be in ``[project] dependencies``; an optional one
   (inside a function, under ``try: ... except ImportError``, under ``if TYPE_CHECKING``, or in a module
   only an extra's users load, see ``OPTIONAL_FILES``) may be in an extra instead. A dependency that a
   sibling happens to bring along does not count.
2. **Declared order.** mol packages depend on each other only along core <- index <- serve, core <- train,
   and train -> index only through mol-train's ``index`` extra, with function-local imports
   (``SIBLING_EDGES``); both the imports and the pyproject declarations are checked.
3. Style rule 2: mol-core never imports faiss, torchrec or grpc (``FORBIDDEN_IMPORTS``), and sibling
   versions move in lockstep.

The checks are plain functions (:func:`import_problems`, :func:`declaration_problems`); the tests at the
bottom run them on a made-up package to show that each rule fails when broken.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "mol-core": "mol_core",
    "mol-train": "mol_train",
    "mol-index": "mol_index",
    "mol-serve": "mol_serve",
}
SIBLINGS = {module: name for name, module in PACKAGES.items()}

#: Which distributions provide each third-party top-level module. An import of a module missing here
#: fails the test: add the module with its distribution(s), and declare one of them.
DISTRIBUTIONS = {
    "faiss": {"faiss-cpu"},
    "fbgemm_gpu": {"fbgemm-gpu", "fbgemm-gpu-cpu"},
    "google": {"protobuf"},  # google.protobuf
    "grpc": {"grpcio"},
    "grpc_health": {"grpcio-health-checking"},
    "grpc_reflection": {"grpcio-reflection"},
    "matplotlib": {"matplotlib"},
    "numpy": {"numpy"},
    "onnx": {"onnx"},
    "onnxruntime": {"onnxruntime"},
    "prometheus_client": {"prometheus-client"},
    "safetensors": {"safetensors"},
    "tokenizers": {"tokenizers"},
    "tomli": {"tomli"},
    "torch": {"torch"},
    "torchrec": {"torchrec"},
    "tqdm": {"tqdm"},
    "transformers": {"transformers"},
    "triton": {"triton"},
}

#: Modules whose build the machine chooses: a module-level import of one is declared when *every* extra
#: listed declares a distribution of it (mol-train: fbgemm-gpu-cpu in ``cpu``, fbgemm-gpu in ``gpu``;
#: docs/install.md).
CHOSEN_BY_EXTRA = {"fbgemm_gpu": ("cpu", "gpu")}

#: Files, relative to a package's import directory, that only an extra's users load: their imports may be
#: declared in an extra (the generated gRPC stubs need mol-core's ``grpc`` extra).
OPTIONAL_FILES = {"mol-core": {"proto/mol/v1/retrieval_pb2_grpc.py"}}

#: The allowed edges between mol packages (importer, imported) -> where the importer declares it:
#: ``None`` for ``[project] dependencies``, or the name of the one extra that carries the edge (its imports
#: must then be optional, i.e. function-local). Any other edge is against the declared order.
SIBLING_EDGES: dict[tuple[str, str], str | None] = {
    ("mol-index", "mol-core"): None,
    ("mol-serve", "mol-core"): None,
    ("mol-serve", "mol-index"): None,
    ("mol-train", "mol-core"): None,
    ("mol-train", "mol-index"): "index",
}

# Top-level modules each package's source may NOT import (style rule 2; checked besides the graph).
FORBIDDEN_IMPORTS = {
    "mol-core": {"mol_train", "mol_index", "mol_serve", "faiss", "torchrec", "fbgemm_gpu", "grpc"},
    "mol-index": {"mol_train", "mol_serve", "torchrec", "fbgemm_gpu", "grpc"},
    "mol-train": {"mol_serve"},
    "mol-serve": {"mol_train", "torchrec", "fbgemm_gpu"},
}

_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a PEP 508 requirement string."""
    match = _REQUIREMENT_NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


@dataclass(frozen=True)
class Declared:
    """A package's declared distributions: ``base`` from ``[project] dependencies``, ``extras`` by name."""

    base: frozenset[str]
    extras: dict[str, frozenset[str]]

    @classmethod
    def from_project(cls, project: dict[str, Any]) -> Declared:
        extras = project.get("optional-dependencies", {})
        return cls(
            base=frozenset(requirement_name(r) for r in project.get("dependencies", [])),
            extras={e: frozenset(requirement_name(r) for r in reqs) for e, reqs in extras.items()},
        )

    def in_any_extra(self, names: set[str]) -> bool:
        return any(names & declared for declared in self.extras.values())


@dataclass(frozen=True)
class Import:
    """One imported top-level module: where, and whether the module loads without it."""

    module: str
    where: str  # "path:line"
    optional: bool


def _is_import_guard(node: ast.Try) -> bool:
    names: set[str] = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names.update(kind.id for kind in kinds if isinstance(kind, ast.Name))
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, *, label: str, optional_file: bool = False) -> list[Import]:
    """Every absolute import in ``path`` by top-level module; relative imports are the package's own.

    An import is optional when it sits in a function body, in the body of a ``try`` that catches
    ImportError/ModuleNotFoundError, under ``if TYPE_CHECKING``, or anywhere in an ``optional_file``.
    """
    found: list[Import] = []

    def visit(node: ast.AST, optional: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = optional or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                if isinstance(child, ast.Import):
                    modules = [alias.name.split(".")[0] for alias in child.names]
                else:
                    modules = [child.module.split(".")[0]] if child.module and child.level == 0 else []
                found.extend(Import(m, f"{label}:{child.lineno}", optional) for m in modules)
            elif isinstance(child, ast.Try) and _is_import_guard(child):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), True)
                for part in (*child.handlers, *child.orelse, *child.finalbody):
                    visit(ast.Module(body=[part], type_ignores=[]), optional)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(ast.Module(body=child.body, type_ignores=[]), True)
                visit(ast.Module(body=child.orelse, type_ignores=[]), optional)
            else:
                visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), optional_file)
    return found


def package_imports(name: str, src: Path, optional_files: set[str] | None = None) -> list[Import]:
    """The imports of every module under ``src`` (the package's import directory)."""
    found: list[Import] = []
    for path in sorted(src.rglob("*.py")):
        relative = path.relative_to(src).as_posix()
        optional_file = relative in (optional_files or set())
        found += imports_of(path, label=f"{name}/{relative}", optional_file=optional_file)
    return found


def import_problems(name: str, own_module: str, imports: list[Import], declared: Declared) -> list[str]:
    """Why these imports of package ``name`` break rule 1 or 2 (empty when they do not).

    Each problem is reported once, at its first import site, with the number of other sites.
    """
    sites: dict[str, list[str]] = {}
    for imp in imports:
        for problem in _problems_of_one(name, own_module, imp, declared):
            sites.setdefault(problem, []).append(imp.where)
    return [
        f"{where[0]}: {problem}" + (f" (and {len(where) - 1} more)" if len(where) > 1 else "")
        for problem, where in sites.items()
    ]


def _problems_of_one(name: str, own_module: str, imp: Import, declared: Declared) -> list[str]:
    module = imp.module
    if module == own_module or module in sys.stdlib_module_names:
        return []
    if module in SIBLINGS:
        sibling = SIBLINGS[module]
        if (name, sibling) not in SIBLING_EDGES:
            return [f"{name} imports {module}, against the declared order"]
        extra = SIBLING_EDGES[(name, sibling)]
        if extra is None:
            return (
                [] if sibling in declared.base else [f"imports {module}; declare {sibling} in dependencies"]
            )
        if not imp.optional:
            return [f"{name} may import {module} only inside a function (extra {extra!r})"]
        if sibling not in declared.extras.get(extra, frozenset()):
            return [f"imports {module}; declare {sibling} in the {extra!r} extra"]
        return []
    if module not in DISTRIBUTIONS:
        return [
            f"imports {module}, which DISTRIBUTIONS in tests/test_architecture.py does not know: "
            "add the distribution that provides it there, and declare it"
        ]
    provided_by = DISTRIBUTIONS[module]
    if provided_by & declared.base:
        return []
    chosen = CHOSEN_BY_EXTRA.get(module)
    if chosen and all(provided_by & declared.extras.get(extra, frozenset()) for extra in chosen):
        return []
    if imp.optional and declared.in_any_extra(provided_by):
        return []
    where = "dependencies or an extra" if imp.optional else "dependencies"
    return [f"imports {module} but {name} declares none of {sorted(provided_by)} in {where}"]


def declaration_problems(name: str, declared: Declared) -> list[str]:
    """Sibling declarations in a pyproject that break the declared order (rule 2)."""
    problems: list[str] = []
    places = [(None, declared.base), *declared.extras.items()]
    for extra, names in places:
        for sibling in sorted(names & set(PACKAGES)):
            if sibling == name:
                continue  # a self-reference such as mol-train[all] = ["mol-train[cpu]"]
            where = "dependencies" if extra is None else f"extra {extra!r}"
            if (name, sibling) not in SIBLING_EDGES:
                problems.append(f"{name} declares {sibling} in {where}, against the declared order")
            elif SIBLING_EDGES[(name, sibling)] != extra:
                wanted = SIBLING_EDGES[(name, sibling)]
                place = "dependencies" if wanted is None else f"the {wanted!r} extra"
                problems.append(f"{name} declares {sibling} in {where}; the graph allows it only in {place}")
    return problems


def load_project(name: str) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())[
        "project"
    ]
    return project


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_import_is_declared_and_follows_the_graph(package: str) -> None:
    src = ROOT / "packages" / package / "src" / PACKAGES[package]
    declared = Declared.from_project(load_project(package))
    imports = package_imports(package, src, OPTIONAL_FILES.get(package, set()))
    assert imports, f"no imports found under {src}"
    problems = import_problems(package, PACKAGES[package], imports, declared)
    problems += declaration_problems(package, declared)
    assert not problems, "\n".join(problems)


def test_mol_train_reaches_mol_index_only_through_its_extra() -> None:
    """The one optional edge, as docs/architecture.md draws it: declared in the extra, imported lazily."""
    declared = Declared.from_project(load_project("mol-train"))
    assert "mol-index" in declared.extras["index"]
    assert "mol-index" not in declared.base
    src = ROOT / "packages" / "mol-train" / "src" / "mol_train"
    uses = [imp for imp in package_imports("mol-train", src) if imp.module == "mol_index"]
    assert uses, "mol-train no longer imports mol_index: drop the edge from SIBLING_EDGES and the docs"
    assert all(imp.optional for imp in uses), uses


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_dependencies_point_one_way(package: str) -> None:
    src = ROOT / "packages" / package / "src" / PACKAGES[package]
    generated = src / "proto"  # generated gRPC stubs import grpc; only mol-serve imports those modules
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            {imp.module for imp in imports_of(path, label=path.name)} & FORBIDDEN_IMPORTS[package]
        )
        for path in src.rglob("*.py")
        if generated not in path.parents
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_sibling_versions_move_in_lockstep() -> None:
    projects = {name: load_project(name) for name in PACKAGES}
    versions = {name: p["version"] for name, p in projects.items()}
    assert len(set(versions.values())) == 1, versions
    version = versions["mol-core"]
    for name, project in projects.items():
        requirements = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        for requirement in requirements:
            sibling = requirement_name(requirement)
            if sibling in PACKAGES and sibling != name:
                base = requirement.split(";")[0].replace(" ", "")
                assert base.endswith(f"=={version}"), (
                    f"{name} must pin {sibling}=={version}; has {requirement!r}"
                )


def test_every_package_has_readme_tests_and_py_typed() -> None:
    for name, module in PACKAGES.items():
        package = ROOT / "packages" / name
        assert (package / "README.md").is_file(), name
        assert (package / "src" / module / "py.typed").is_file(), name
        assert list((package / "tests").glob("test_*.py")), name


# --- the checks fail when a rule is broken (a made-up package in tmp_path) ---------------------------------

TRAIN_DECLARED = Declared(
    base=frozenset({"mol-core", "torch", "torchrec"}),
    extras={"index": frozenset({"mol-index"}), "cpu": frozenset({"fbgemm-gpu-cpu"})},
)


def problems_of(
    tmp_path: Path, source: str, *, name: str = "mol-train", declared: Declared = TRAIN_DECLARED
) -> list[str]:
    src = tmp_path / PACKAGES[name]
    src.mkdir(exist_ok=True)
    (src / "module.py").write_text(source)
    return import_problems(name, PACKAGES[name], package_imports(name, src), declared)


def test_a_declared_package_passes(tmp_path: Path) -> None:
    source = (
        "import os\nimport torch\nfrom torchrec import KeyedJaggedTensor\nfrom mol_core import errors\n"
        "from mol_train import config\n"
        "def lazy():\n    from mol_index.layers import build_index_layer\n"
        "try:\n    import fbgemm_gpu\nexcept ImportError:\n    fbgemm_gpu = None\n"
    )
    assert problems_of(tmp_path, source) == []


def test_an_undeclared_import_fails(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "import numpy as np\n")
    assert "imports numpy but mol-train declares none of ['numpy'] in dependencies" in problem


def test_an_import_unknown_to_the_table_fails(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "import yaml\n")
    assert "DISTRIBUTIONS" in problem


def test_a_module_level_import_of_an_extra_fails(tmp_path: Path) -> None:
    # fbgemm-gpu-cpu is only in the cpu extra, and the made-up package declares no gpu extra
    (problem,) = problems_of(tmp_path, "import fbgemm_gpu\n")
    assert "fbgemm_gpu" in problem


def test_mol_train_importing_mol_index_at_module_level_fails(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, "from mol_index.layers import build_index_layer\n")
    assert "only inside a function" in problem


def test_an_import_against_the_order_fails(tmp_path: Path) -> None:
    declared = Declared(base=frozenset({"torch", "mol-index"}), extras={})
    source = "def lazy():\n    import mol_index\n"
    (problem,) = problems_of(tmp_path, source, name="mol-core", declared=declared)
    assert "against the declared order" in problem
    (problem,) = problems_of(tmp_path, "import mol_serve\n", name="mol-train")
    assert "against the declared order" in problem


def test_a_declaration_against_the_order_fails() -> None:
    in_base = Declared(base=frozenset({"mol-core", "mol-index"}), extras={})
    assert declaration_problems("mol-train", in_base) == [
        "mol-train declares mol-index in dependencies; the graph allows it only in the 'index' extra"
    ]
    backwards = Declared(base=frozenset({"mol-serve"}), extras={})
    assert declaration_problems("mol-index", backwards) == [
        "mol-index declares mol-serve in dependencies, against the declared order"
    ]
