"""Test certificates (a self-signed CA and a SuperLink certificate) and SuperNode key pairs."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_certs(out: Path, hosts: list[str], days: int = 365) -> Path:
    """Write ``ca.crt``/``ca.key`` (self-signed CA) and ``server.pem``/``server.key`` for ``hosts``."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peerkd test CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key, now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        _builder(server_name, ca_name, key, now, days)
        .add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    for name, k in (("ca.key", ca_key), ("server.key", key)):
        _write_secret(out / name, k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(cert.public_bytes(pem))
    return out


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    """A certificate for ``key``'s public half, valid ``days`` days from ``now``, not yet signed."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    """Subject alternative names: an IP address where a host parses as one, else a DNS name."""
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    return sans


def make_node_keys(out: Path, count: int, prefix: str = "node") -> list[tuple[Path, Path]]:
    """Write ``count`` ECDSA P-384 key pairs (OpenSSH format, as ``flwr supernode register`` wants)."""
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = out / f"{prefix}-{i}", out / f"{prefix}-{i}.pub"
        _write_secret(
            private,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        openssh = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        public.write_bytes(key.public_key().public_bytes(*openssh))
        pairs.append((private, public))
    return pairs


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` readable by its owner only."""
    path.write_bytes(data)
    path.chmod(0o600)
