"""The deployment files in deploy/: valid against the Kubernetes and Compose schemas (no cluster here),
and consistent with mol-serve's command line and with each other: ports, gRPC health probes, Prometheus
annotations, and the front tier's shard targets against the shard servers they name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="reading the deployment files needs PyYAML")
pytest.importorskip("mol_serve", reason="the commands are checked against mol-serve's CLI")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
#: The Kubernetes release whose schemas the manifests are checked against (strict: unknown fields fail).
KUBERNETES_VERSION = "1.33.0"
NUM_SHARDS = 3


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == kind}


def _serve(args: list[str]) -> Any:
    """The parsed ``mol-serve`` command line (fails on an unknown flag or a bad value)."""
    from mol_serve.cli import _parser

    parsed = _parser().parse_args(args)
    assert parsed.command == "serve"
    return parsed


def test_manifests_pass_the_kubernetes_schemas_strictly() -> None:
    validator = pytest.importorskip("kubernetes_validate", reason="the schema linter is kubernetes-validate")
    docs = _documents()
    assert {doc["kind"] for doc in docs} == {"Namespace", "PersistentVolumeClaim", "Deployment", "Service"}
    for doc in docs:
        validator.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError
    broken = {**docs[0], "metadata": {**docs[0]["metadata"], "nmae": "typo"}}
    with pytest.raises(validator.ValidationError):
        validator.validate(broken, KUBERNETES_VERSION, strict=True)


def test_compose_file_passes_the_compose_spec_schema(tmp_path: Path) -> None:
    pytest.importorskip("check_jsonschema", reason="the compose linter is check-jsonschema")

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        return subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)

    result = check(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("healthcheck:", "healthchek:", 1))
    assert check(broken).returncode != 0


def test_kubernetes_tiers_agree_with_the_cli_and_each_other() -> None:
    deployments, services = _by_kind("Deployment"), _by_kind("Service")
    shard_ports = {}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        args = _serve(container["args"])
        assert args.host == "0.0.0.0"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": args.port, "metrics": args.metrics_port}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == args.port  # the gRPC health service
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == args.metrics_port
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        service = services[name]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["clusterIP"] == "None"  # headless: gRPC balances over the replicas itself
        assert [p["port"] for p in service["spec"]["ports"]] == [args.port]
        if name.startswith("mol-shard-"):
            shard = int(pod["metadata"]["labels"]["mol.dev/shard"])
            assert name == f"mol-shard-{shard}"
            (index,) = args.index
            assert index[1].name == f"shard-{shard:05d}-of-{NUM_SHARDS:05d}"
            shard_ports[shard] = args.port
    assert sorted(shard_ports) == list(range(NUM_SHARDS))
    front = _serve(deployments["mol-front"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert front.shard == [
        f"dns:///mol-shard-{s}.mol.svc.cluster.local:{shard_ports[s]}" for s in range(NUM_SHARDS)
    ]
    (index,) = front.index
    assert str(index[1]) == "/artifacts/sets/prod"
    assert front.shard_token_file == front.token_file  # the shards accept the serving token


def test_compose_services_agree_with_the_cli_and_each_other() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert sorted(services) == ["front", *(f"shard-{s}" for s in range(NUM_SHARDS))]
    ports = {}
    for name, service in services.items():
        args = _serve(service["command"])
        health = service["healthcheck"]["test"]
        assert health[1:4] == ["mol-serve", "health", "--target"]
        assert health[4] == f"127.0.0.1:{args.port}"
        ports[name] = args.port
        if name.startswith("shard-"):
            (index,) = args.index
            assert index[1].name == f"shard-{int(name[6:]):05d}-of-{NUM_SHARDS:05d}"
    front = _serve(services["front"]["command"])
    assert front.shard == [f"dns:///shard-{s}:{ports[f'shard-{s}']}" for s in range(NUM_SHARDS)]
    assert set(services["front"]["depends_on"]) == {f"shard-{s}" for s in range(NUM_SHARDS)}


def test_the_image_copies_what_exists() -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"deploy/Dockerfile copies {source}, which does not exist"
