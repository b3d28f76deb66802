"""TLS material for etcd with the ``cryptography`` package: a CA, a server certificate
for the etcd members (client and peer URLs) and one client certificate per user.

A client certificate's CN is the etcd user it stands for: with etcd's
``--client-cert-auth``, a request that carries no password token runs as that user.
Private keys are written 0600. An existing CA is reused, so certificates issued later
(new hosts) are trusted by the same members.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridtool.auth.credfiles import write_private
from gridtool.errors import UsageError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER = "server"
VALID_DAYS = 825


@dataclass(frozen=True)
class Issued:
    """One certificate written: its name (CN), certificate and key files."""

    name: str
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gridtool"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_or_make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as exc:
            raise UsageError(f"{cert_path} / {key_path}: not a PEM CA and key ({exc})") from None
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("gridtool CA"))
            .issuer_name(_name("gridtool CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS * 2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(directory: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str,
           file_stem: str, server: bool, ips: Iterable[str] = (),
           dns: Iterable[str] = ()) -> Issued:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:  # members use it for client URLs and, as clients, for peer URLs
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    issued = Issued(cn, directory / f"{file_stem}.crt", directory / f"{file_stem}.key")
    write_private(issued.key, _pem_key(key))
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return issued


def make_certs(directory: Path, clients: Iterable[str], ips: Iterable[str] = ("127.0.0.1",),
               dns: Iterable[str] = ("localhost",)) -> list[Issued]:
    """Write (or reuse) the CA, then issue the server certificate (valid for ``ips`` and
    ``dns``) and one client certificate per name in ``clients`` (CN = etcd user)."""
    try:
        ips = [str(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise UsageError(f"--ip: {exc}") from None
    directory.mkdir(parents=True, exist_ok=True)
    ca = _load_or_make_ca(directory)
    issued = [Issued("gridtool CA", directory / CA_CERT, directory / CA_KEY),
              _issue(directory, ca, "etcd", SERVER, server=True, ips=ips, dns=dns)]
    issued += [_issue(directory, ca, name, name, server=False) for name in clients]
    return issued
