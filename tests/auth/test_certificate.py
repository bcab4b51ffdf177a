"""Tests for auth/certificate.py: chain verification against ca-cert, CRL revocation and reload,
user/group extraction (CN, UID, SAN rfc822name, OU), and the certificate login method.

Rules: certificates are made in memory with trio_ocserv.certgen and cryptography; files live in
tmp_path; `now` is passed in; hypothesis feeds arbitrary bytes with a modest example count.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ocserv import certgen
from trio_ocserv.auth.certificate import (
    CertificateMethod,
    CertificateNaming,
    CertificateRejected,
    CertificateSetupError,
    ClientCertificateVerifier,
    CrlFile,
    load_ca_certificates,
    parse_crls,
)
from trio_ocserv.auth.methods import CertificateIdentity, LoginAttempt, Verdict

UID = "0.9.2342.19200300.100.1.1"
CN = "2.5.4.3"
OU = "2.5.4.11"
NOW = time.time()

CA = certgen.certificate_authority("test CA")
OTHER_CA = certgen.certificate_authority("other CA")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def client(
    cn: str = "alice",
    *,
    ca: certgen.CertAndKey = CA,
    extra: dict[x509.ObjectIdentifier, str] | None = None,
) -> x509.Certificate:
    return certgen.issue(ca, cn, server=False, extra_subject=extra).cert


def custom_leaf(
    subject: list[x509.NameAttribute[str]],
    *,
    emails: tuple[str, ...] = (),
    usage: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
    issuer: certgen.CertAndKey = CA,
    days: int = 30,
) -> x509.Certificate:
    key = certgen.new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if emails:
        san = x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails])
        builder = builder.add_extension(san, critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def intermediate_ca(parent: certgen.CertAndKey) -> certgen.CertAndKey:
    key = certgen.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(parent.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
            critical=False,
        )
        .sign(parent.key, hashes.SHA256())
    )  # fmt: skip
    return certgen.CertAndKey(cert, key)


def crl_pem(ca: certgen.CertAndKey, revoked: list[x509.Certificate]) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=7))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def verifier(
    *,
    user_oid: str = CN,
    group_oid: str | None = None,
    crl: CrlFile | None = None,
    anchors: tuple[x509.Certificate, ...] = (CA.cert,),
) -> ClientCertificateVerifier:
    return ClientCertificateVerifier(anchors, CertificateNaming(user_oid, group_oid), crl)


# --- identity -------------------------------------------------------------------------------


def test_user_from_cn_and_groups_from_every_ou() -> None:
    cert = custom_leaf(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admins"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "eng"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admins"),
        ]
    )
    identity = verifier(group_oid=OU).identify([der(cert)], NOW)
    assert identity.user == "alice"
    assert identity.groups == ("admins", "eng")
    assert "CN=alice" in identity.subject


def test_user_from_uid() -> None:
    cert = client("Alice Example", extra={NameOID.USER_ID: "alice"})
    assert verifier(user_oid=UID).identify([der(cert)], NOW).user == "alice"


def test_user_from_san_rfc822name() -> None:
    cert = custom_leaf(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Alice")],
        emails=("alice@example.com", "a@example.org"),
    )
    identity = verifier(user_oid="SAN(rfc822name)").identify([der(cert)], NOW)
    assert identity.user == "alice@example.com"


def test_certificate_without_the_user_field_is_rejected() -> None:
    with pytest.raises(CertificateRejected, match="no"):
        verifier(user_oid=UID).identify([der(client("alice"))], NOW)
    with pytest.raises(CertificateRejected):
        verifier(user_oid="SAN(rfc822name)").identify([der(client("alice"))], NOW)


def test_naming_rejects_bad_settings() -> None:
    with pytest.raises(CertificateSetupError):
        CertificateNaming("not-an-oid")
    with pytest.raises(CertificateSetupError):
        CertificateNaming(CN, "SAN(x400address)")


# --- chain verification ---------------------------------------------------------------------


def test_certificate_from_another_ca_is_rejected() -> None:
    with pytest.raises(CertificateRejected, match="not trusted"):
        verifier().identify([der(client(ca=OTHER_CA))], NOW)


def test_any_certificate_of_the_ca_file_is_an_anchor() -> None:
    v = verifier(anchors=(OTHER_CA.cert, CA.cert))
    assert v.identify([der(client(ca=OTHER_CA))], NOW).user == "alice"
    assert v.identify([der(client())], NOW).user == "alice"


def test_expired_or_not_yet_valid_certificates_are_rejected() -> None:
    cert = der(client())
    with pytest.raises(CertificateRejected):
        verifier().identify([cert], NOW + 400 * 86400)
    with pytest.raises(CertificateRejected):
        verifier().identify([cert], NOW - 86400)


def test_intermediate_sent_by_the_client_is_used() -> None:
    middle = intermediate_ca(CA)
    leaf = custom_leaf([x509.NameAttribute(NameOID.COMMON_NAME, "alice")], issuer=middle)
    assert verifier().identify([der(leaf), der(middle.cert)], NOW).user == "alice"
    with pytest.raises(CertificateRejected):
        verifier().identify([der(leaf)], NOW)


def test_server_only_certificate_cannot_log_in() -> None:
    cert = custom_leaf(
        [x509.NameAttribute(NameOID.COMMON_NAME, "alice")],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    with pytest.raises(CertificateRejected, match="client"):
        verifier().identify([der(cert)], NOW)
    no_usage = custom_leaf([x509.NameAttribute(NameOID.COMMON_NAME, "alice")], usage=None)
    assert verifier().identify([der(no_usage)], NOW).user == "alice"


def test_the_ca_itself_cannot_log_in() -> None:
    with pytest.raises(CertificateRejected):
        verifier().identify([der(CA.cert)], NOW)


def test_empty_long_or_garbage_chains_are_rejected() -> None:
    with pytest.raises(CertificateRejected, match="no certificate"):
        verifier().identify([], NOW)
    with pytest.raises(CertificateRejected, match="longer"):
        verifier().identify([der(client())] * 9, NOW)
    with pytest.raises(CertificateRejected, match="unparsable"):
        verifier().identify([b"\x30\x03\x02\x01\x00"], NOW)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=3))
def test_arbitrary_bytes_only_raise_certificate_rejected(chain: list[bytes]) -> None:
    with pytest.raises(CertificateRejected):
        verifier().identify(chain, NOW)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.binary(max_size=8))
def test_corrupted_certificates_only_raise_certificate_rejected(
    position: int, noise: bytes
) -> None:
    good = der(client())
    index = position % len(good)
    mangled = good[:index] + noise + good[index + len(noise) :]
    try:
        identity = verifier().identify([mangled], NOW)
    except CertificateRejected:
        return
    # a change the signature does not cover cannot alter what the certificate says
    assert identity.user == "alice"


# --- CRL ------------------------------------------------------------------------------------


def test_revoked_certificate_is_rejected(tmp_path: Path) -> None:
    revoked, fine = client("alice"), client("bob")
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(CA, [revoked]))
    v = verifier(crl=CrlFile(str(path)))
    with pytest.raises(CertificateRejected, match="revoked"):
        v.identify([der(revoked)], NOW)
    assert v.identify([der(fine)], NOW).user == "bob"


def test_crl_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    cert = client("alice")
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(CA, []))
    v = verifier(crl=CrlFile(str(path)))
    assert v.identify([der(cert)], NOW).user == "alice"
    path.write_bytes(crl_pem(CA, [cert]))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(CertificateRejected, match="revoked"):
        v.identify([der(cert)], NOW)


def test_crl_signed_by_someone_else_is_ignored(tmp_path: Path) -> None:
    cert = client("alice")
    forged = x509.load_pem_x509_crl(crl_pem(OTHER_CA, [cert]))
    # same issuer name as our CA, other key: must not revoke anything
    impostor = certgen.CertAndKey(CA.cert, OTHER_CA.key)
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(impostor, [cert]) + forged.public_bytes(serialization.Encoding.PEM))
    assert verifier(crl=CrlFile(str(path))).identify([der(cert)], NOW).user == "alice"


def test_intermediate_revoked_by_the_root_rejects_its_leaves(tmp_path: Path) -> None:
    middle = intermediate_ca(CA)
    leaf = custom_leaf([x509.NameAttribute(NameOID.COMMON_NAME, "alice")], issuer=middle)
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(CA, [middle.cert]))
    with pytest.raises(CertificateRejected, match="revoked"):
        verifier(crl=CrlFile(str(path))).identify([der(leaf), der(middle.cert)], NOW)


def test_unreadable_crl_rejects_everyone(tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    v = verifier(crl=CrlFile(str(path)))
    with pytest.raises(CertificateRejected, match="cannot read"):
        v.identify([der(client())], NOW)
    path.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    with pytest.raises(CertificateRejected, match="unreadable"):
        v.identify([der(client())], NOW)


def test_parse_crls_reads_der_pem_and_empty() -> None:
    pem = crl_pem(CA, [])
    der_crl = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    assert len(parse_crls(pem + pem, "x")) == 2
    assert len(parse_crls(der_crl, "x")) == 1
    assert parse_crls(b"", "x") == ()


# --- ca-cert file ---------------------------------------------------------------------------


def test_load_ca_certificates(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(CA.cert_pem + OTHER_CA.cert_pem)
    assert load_ca_certificates(str(bundle)) == (CA.cert, OTHER_CA.cert)
    single = tmp_path / "ca.der"
    single.write_bytes(der(CA.cert))
    assert load_ca_certificates(str(single)) == (CA.cert,)
    with pytest.raises(CertificateSetupError, match="cannot read"):
        load_ca_certificates(str(tmp_path / "absent.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    with pytest.raises(CertificateSetupError, match="not a certificate"):
        load_ca_certificates(str(garbage))
    with pytest.raises(CertificateSetupError):
        verifier(anchors=())


# --- the login method -----------------------------------------------------------------------


def test_certificate_method_admits_only_its_user() -> None:
    method = CertificateMethod()
    assert method.steps == ()
    assert method.requires_certificate
    alice = CertificateIdentity("alice", ("admins",))
    assert method.admit(LoginAttempt("alice", None, "", alice), NOW).verdict is Verdict.ACCEPTED
    assert method.admit(LoginAttempt("bob", None, "", alice), NOW).verdict is Verdict.DENIED
    assert method.admit(LoginAttempt("alice", None, "", None), NOW).verdict is Verdict.DENIED
    # without cert-group-oid the certificate says nothing about groups
    assert method.admit(LoginAttempt("alice", "eng", "", alice), NOW).verdict is Verdict.ACCEPTED
    assert method.check(LoginAttempt("alice", None, "", alice), 0, NOW).verdict is Verdict.ERROR
    assert method.available_groups() == ()


def test_certificate_method_with_groups_bounds_the_group() -> None:
    method = CertificateMethod(constrains_groups=True)
    alice = CertificateIdentity("alice", ("admins", "eng"))
    chosen = method.admit(LoginAttempt("alice", "eng", "", alice), NOW)
    assert (chosen.verdict, chosen.group) == (Verdict.ACCEPTED, "eng")
    assert method.admit(LoginAttempt("alice", "sales", "", alice), NOW).verdict is Verdict.DENIED
    assert method.admit(LoginAttempt("alice", None, "", alice), NOW).group is None
