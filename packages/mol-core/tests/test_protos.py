"""The checked-in generated code in mol_core.proto matches protos/ and the declared dependency floors.

- Staleness, byte for byte: regenerate with tools/gen_protos.py and compare (needs the pinned
  grpcio-tools; skipped otherwise, the nox test session installs it).
- Staleness, by schema: the descriptors embedded in the checked-in modules equal the ones protoc compiles
  from protos/ (any grpcio-tools version).
- Floors: packages/mol-core/pyproject.toml allows no protobuf/grpcio older than the generated code needs.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO_ROOT / "protos"
GENERATED = REPO_ROOT / "packages" / "mol-core" / "src" / "mol_core" / "proto"
PYPROJECT = REPO_ROOT / "packages" / "mol-core" / "pyproject.toml"
GEN_SCRIPT = REPO_ROOT / "tools" / "gen_protos.py"

_PROTOBUF_GENCODE = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),\s*'([^']*)'"
)
_GRPC_GENCODE = re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'$", re.MULTILINE)


def _load_gen_protos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mol_tools_gen_protos", GEN_SCRIPT)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {GEN_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def _proto_sources() -> list[Path]:
    return sorted(path.relative_to(PROTO_ROOT) for path in PROTO_ROOT.rglob("*.proto"))


def _module_name(proto: Path, suffix: str = "_pb2") -> str:
    return "mol_core.proto." + ".".join(proto.with_suffix("").parts) + suffix


def _declares_service(proto: Path) -> bool:
    text = re.sub(
        r"//[^\n]*|/\*.*?\*/", "", (PROTO_ROOT / proto).read_text(encoding="utf-8"), flags=re.DOTALL
    )
    return re.search(r"^\s*service\s+\w+", text, flags=re.MULTILINE) is not None


def _strip_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """Clears ``json_name``: protoc fills it in descriptor sets, the Python generator leaves it out."""
    for message in messages:
        for field in [*message.field, *message.extension]:
            field.ClearField("json_name")
        _strip_json_names(message.nested_type)


# ------------------------------------------------------------------------------------------- staleness


def test_generated_code_is_byte_identical_to_a_fresh_generation(tmp_path: Path) -> None:
    gen = _load_gen_protos()
    installed = gen.installed_grpcio_tools_version()
    if installed != gen.GRPCIO_TOOLS_VERSION:
        pytest.skip(
            f"grpcio-tools {installed or 'is not installed'}; the byte-for-byte check needs exactly "
            f"{gen.GRPCIO_TOOLS_VERSION} (pip install grpcio-tools=={gen.GRPCIO_TOOLS_VERSION}; "
            "nox -s test installs it)"
        )
    gen.generate(tmp_path)
    fresh, checked_in = _tree(tmp_path), _tree(GENERATED)
    assert sorted(fresh) == sorted(checked_in), "generated file set differs; run python tools/gen_protos.py"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"stale generated files {stale}; run python tools/gen_protos.py"


def test_checked_in_descriptors_match_the_proto_sources(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools is needed to compile protos/")
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    out = tmp_path / "descriptors.pb"
    sources = _proto_sources()
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known}",
            f"--descriptor_set_out={out}",
            *(str(PROTO_ROOT / rel) for rel in sources),
        ]
    )
    assert code == 0, "protoc rejected protos/ (its messages are in the captured stderr)"
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert sorted(f.name for f in compiled.file) == sorted(rel.as_posix() for rel in sources)
    for expected in compiled.file:
        _strip_json_names(expected.message_type)
        for extension in expected.extension:
            extension.ClearField("json_name")
        module = importlib.import_module(_module_name(Path(expected.name)))
        embedded = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert embedded == expected, (
            f"{module.__name__} was generated from another version of {expected.name}; "
            "run python tools/gen_protos.py"
        )


def test_every_proto_has_generated_modules_and_nothing_else() -> None:
    expected = {"__init__.py"}
    for rel in _proto_sources():
        package = rel.parent
        expected.update((pkg / "__init__.py").as_posix() for pkg in [package, *package.parents][:-1])
        stem = (package / rel.stem).as_posix()
        expected.update({f"{stem}_pb2.py", f"{stem}_pb2.pyi"})
        if _declares_service(rel):
            expected.add(f"{stem}_pb2_grpc.py")
    assert set(_tree(GENERATED)) == expected


def test_generated_modules_import_through_the_package_path() -> None:
    for rel in _proto_sources():
        module = importlib.import_module(_module_name(rel))
        assert module.DESCRIPTOR.name == rel.as_posix()
    # The generator rewrote every cross-module import; no top-level `mol` package is needed.
    for path in GENERATED.rglob("*.py*"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) mol\.", text, flags=re.MULTILINE), path


# ------------------------------------------------------------------------------------------------ floors


def _version_key(text: str) -> tuple[int, ...] | object:
    try:
        from packaging.version import Version
    except ImportError:  # pragma: no cover - packaging is nearly always present alongside pip
        return tuple(int(part) for part in re.findall(r"\d+", text)[:3])
    return Version(text)


def _floor(requirement: str) -> str | None:
    """The version after ``>=`` in a requirement such as ``protobuf>=6.31.0,<8``, if any."""
    match = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", requirement)
    return match.group(1) if match else None


def _floor_problem(requirement: str, needed: str) -> str | None:
    """Why ``requirement`` admits a version older than ``needed`` (``None`` when it does not)."""
    floor = _floor(requirement)
    if floor is None:
        return f"{requirement!r} declares no '>=' floor; the generated code needs >= {needed}"
    if _version_key(floor) < _version_key(needed):  # type: ignore[operator]
        return f"{requirement!r} allows versions older than {needed}, which the generated code needs"
    return None


def _declared(name: str, requirements: list[str]) -> str:
    matches = [req for req in requirements if re.match(rf"{re.escape(name)}\s*(\[|[<>=!~;]|$)", req)]
    assert len(matches) == 1, f"expected exactly one {name} requirement in {PYPROJECT}; got {matches}"
    return matches[0]


def _pyproject() -> dict[str, object]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with PYPROJECT.open("rb") as handle:
        data: dict[str, object] = tomllib.load(handle)
    return data


def _needed_protobuf() -> str:
    versions = set()
    for path in sorted(GENERATED.rglob("*_pb2.py")):
        match = _PROTOBUF_GENCODE.search(path.read_text(encoding="utf-8"))
        assert match, f"{path} has no ValidateProtobufRuntimeVersion call; was it generated by protoc?"
        major, minor, patch, suffix = match.groups()
        versions.add(f"{major}.{minor}.{patch}{suffix}")
    assert versions, f"no generated *_pb2.py under {GENERATED}"
    return max(versions, key=_version_key)  # type: ignore[arg-type]


def _needed_grpcio() -> str:
    versions = set()
    for path in sorted(GENERATED.rglob("*_pb2_grpc.py")):
        match = _GRPC_GENCODE.search(path.read_text(encoding="utf-8"))
        assert match, f"{path} has no GRPC_GENERATED_VERSION"
        versions.add(match.group(1))
    assert versions, f"no generated *_pb2_grpc.py under {GENERATED}"
    return max(versions, key=_version_key)  # type: ignore[arg-type]


def test_protobuf_floor_covers_the_generated_code() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    requirement = _declared("protobuf", project["dependencies"])
    problem = _floor_problem(requirement, _needed_protobuf())
    assert problem is None, problem


def test_grpcio_floor_of_the_grpc_extra_covers_the_generated_code() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    requirement = _declared("grpcio", project["optional-dependencies"]["grpc"])
    problem = _floor_problem(requirement, _needed_grpcio())
    assert problem is None, problem


def test_pinned_generator_is_the_one_that_generated_the_grpc_code() -> None:
    pinned = _load_gen_protos().GRPCIO_TOOLS_VERSION
    assert pinned == _needed_grpcio(), "regenerate with the pinned grpcio-tools: python tools/gen_protos.py"


@pytest.mark.parametrize(
    ("requirement", "needed", "ok"),
    [
        ("protobuf>=6.31.0,<8", "6.31.0", True),
        ("protobuf>=6.32,<8", "6.31.0", True),
        ("protobuf>=6.30.0,<8", "6.31.0", False),
        ("protobuf>=6.9.0", "6.31.0", False),  # numeric, not lexical, comparison
        ("protobuf<8", "6.31.0", False),
        ("grpcio>=1.73.1", "1.73.1", True),
        ("grpcio>=1.73.0", "1.73.1", False),
    ],
)
def test_floor_check_flags_a_lowered_or_missing_floor(requirement: str, needed: str, ok: bool) -> None:
    assert (_floor_problem(requirement, needed) is None) is ok
