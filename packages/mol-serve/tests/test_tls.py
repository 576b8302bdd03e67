"""TLS and mutual TLS with certificates generated at test time (``cryptography``), in-process server."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path

import pytest

from mol_serve import AsyncRetrievalClient, ServeConfig, ServeError
from mol_serve.server import create_server

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    ip: bool = False,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(obj: object) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    assert isinstance(obj, ec.EllipticCurvePrivateKey)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("mol test CA", ca_key, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca": _pem(ca),
        "server_cert": _pem(_cert("localhost", server_key, (ca.subject, ca_key), ip=True)),
        "server_key": _pem(server_key),
        "client_cert": _pem(_cert("client", client_key, (ca.subject, ca_key))),
        "client_key": _pem(client_key),
    }
    for name, data in files.items():
        (root / f"{name}.pem").write_bytes(data)
    return {name: root / f"{name}.pem" for name in files}


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_and_mtls(pki: dict[str, Path], artifacts: dict[str, Path], mutual: bool) -> None:
    config = ServeConfig(
        bundle=artifacts["bundle"],
        indexes={"prod": artifacts["index_a"]},
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca"] if mutual else None,
        token="t",
    )
    ca = pki["ca"].read_bytes()

    async def scenario() -> None:
        server, port = await create_server(config)
        await server.start()
        target = f"127.0.0.1:{port}"
        try:
            cert = pki["client_cert"].read_bytes() if mutual else None
            key = pki["client_key"].read_bytes() if mutual else None
            async with AsyncRetrievalClient(
                target, token="t", root_cert=ca, client_cert=cert, client_key=key, timeout=10
            ) as c:
                assert len((await c.retrieve(histories=[[1, 2]], top_k=3)).ids[0]) == 3
            async with AsyncRetrievalClient(target, token="t", timeout=3) as plaintext:
                with pytest.raises(ServeError):
                    await plaintext.retrieve(histories=[[1]], top_k=1)
            if mutual:
                async with AsyncRetrievalClient(target, token="t", root_cert=ca, timeout=3) as no_cert:
                    with pytest.raises(ServeError):
                        await no_cert.retrieve(histories=[[1]], top_k=1)
        finally:
            await server.shutdown(grace=1)

    asyncio.run(scenario())


def test_front_tier_reaches_its_shards_over_mutual_tls(
    pki: dict[str, Path], artifacts: dict[str, Path], tmp_path: Path
) -> None:
    from mol_core.bundle import load_bundle
    from mol_index import MolIndex, ShardedIndex
    from mol_index.sharding import read_shard_set

    shard_set = ShardedIndex.from_index(MolIndex.load(artifacts["index_a"]), 2).save(tmp_path / "set")
    shards = read_shard_set(shard_set).shards
    tls = {"tls_cert": pki["server_cert"], "tls_key": pki["server_key"], "tls_client_ca": pki["ca"]}

    async def scenario() -> None:
        servers, targets = [], []
        try:
            for shard in shards:
                server, port = await create_server(
                    ServeConfig(indexes={"main": shard.path}, token="shard-token", **tls)
                )
                await server.start()
                servers.append(server)
                targets.append(f"127.0.0.1:{port}")
            tier = {"bundle": artifacts["bundle"], "indexes": {"prod": shard_set}, "shards": tuple(targets)}
            mtls = {
                "shard_root_cert": pki["ca"],
                "shard_client_cert": pki["client_cert"],
                "shard_client_key": pki["client_key"],
            }
            front, front_port = await create_server(ServeConfig(**tier, shard_token="shard-token", **mtls))
            await front.start()
            servers.append(front)
            # the same front tier without its client certificate: the shards refuse the handshake
            bare, bare_port = await create_server(
                ServeConfig(**tier, shard_token="shard-token", shard_root_cert=pki["ca"])
            )
            await bare.start()
            servers.append(bare)
            async with AsyncRetrievalClient(f"127.0.0.1:{front_port}", timeout=20) as client:
                result = await client.retrieve(histories=[[1, 2]], top_k=5)
            query = load_bundle(artifacts["bundle"]).encode([[1, 2]])
            want = MolIndex.load(artifacts["index_a"]).search(query, 5)
            assert result.ids == want[1].tolist()
            async with AsyncRetrievalClient(f"127.0.0.1:{bare_port}", timeout=20) as client:
                with pytest.raises(ServeError, match="2 of 2 shards did not answer"):
                    await client.retrieve(histories=[[1, 2]], top_k=5)
        finally:
            for server in servers:
                await server.shutdown(grace=1)

    asyncio.run(scenario())
