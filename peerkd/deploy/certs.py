"""Test certificates (a self-signed CA and a SuperLink certificate) and SuperNode key pairs.

An existing private key is never overwritten unless asked (``force``): a CA key or a node key
in use elsewhere would be lost, and with it every certificate it signed or registration it made.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peerkd.errors import ConfigError, check_range

log = logging.getLogger(__name__)


def make_certs(out: Path, hosts: list[str], days: int = 365, force: bool = False) -> Path:
    """Write ``ca.crt``/``ca.key`` (self-signed CA) and ``server.pem``/``server.key`` for ``hosts``.

    ConfigError (nothing written) if ``ca.key`` or ``server.key`` exists, unless ``force``.
    """
    hosts = check_hosts(",".join(hosts))
    replaced = _refuse_overwrite([out / "ca.key", out / "server.key"], force)
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
        write_secret(out / name, k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (out / "ca.crt").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(cert.public_bytes(pem))
    _say_replaced(replaced)
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
    """Subject alternative names: an IP address (``[::1]`` too) where a host is one, else a DNS name."""
    parsed = [parse_host(h) for h in hosts]
    return [x509.DNSName(h) if isinstance(h, str) else x509.IPAddress(h) for h in parsed]


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def parse_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    """``host`` as an IP address (IPv6 with or without brackets), or as a DNS name (lower case).

    Raises ConfigError naming ``--hosts`` for anything else: ``parse_host("[::1]")`` is
    ``IPv6Address('::1')``, ``parse_host("Node-1.lan")`` is ``"node-1.lan"``, ``parse_host("a b")`` raises.
    """
    text = host.strip()
    try:
        return ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text)
    except ValueError:
        pass
    name = text.rstrip(".").lower()
    if 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
        return name
    raise ConfigError(
        "--hosts", f"{host!r} is neither an IP address nor a DNS name", "e.g. 192.168.1.10,[::1],coordinator.lan"
    )


def check_hosts(hosts: str) -> list[str]:
    """The comma list ``hosts`` as certificate host names, each checked by ``parse_host``."""
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if not names:
        raise ConfigError("--hosts", "no host given", "a comma list of the SuperLink's IP addresses and DNS names")
    return [str(parse_host(h)) for h in names]


def make_node_keys(out: Path, count: int, prefix: str = "node", force: bool = False) -> list[tuple[Path, Path]]:
    """Write ``count`` ECDSA P-384 key pairs (OpenSSH format, as ``flwr supernode register`` wants).

    ConfigError (nothing written) if one of the private keys exists, unless ``force``.
    """
    check_range("--nodes", count, 1)
    replaced = _refuse_overwrite([out / f"{prefix}-{i}" for i in range(count)], force)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = out / f"{prefix}-{i}", out / f"{prefix}-{i}.pub"
        write_secret(
            private,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        openssh = serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        public.write_bytes(key.public_key().public_bytes(*openssh))
        pairs.append((private, public))
    _say_replaced(replaced)
    return pairs


def _refuse_overwrite(keys: list[Path], force: bool) -> list[Path]:
    """The private ``keys`` already there (a dangling link counts); ConfigError naming them unless ``force``."""
    there = [k for k in keys if os.path.lexists(k)]
    if there and not force:
        more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
        raise ConfigError(
            str(there[0]), f"a private key is already there{more}; not overwritten (give --force to replace it)"
        )
    return there


def _say_replaced(keys: list[Path]) -> None:
    """Log each private key that ``force`` replaced."""
    for k in keys:
        log.info("replaced the private key %s", k)


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, readable by its owner only from the first byte on: a new file is
    created 0600 (whatever the umask), an existing one is made 0600 before anything is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)
