"""Tests for auth/registry.py: auth/enable-auth values to chains, policies and the certificate
verifier, and the setup errors a server must not start with.

Rules: settings are built from parsed method strings (and once from config text); files live in
tmp_path; PAM and NSS are fakes.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs
import pytest
from cryptography.hazmat.primitives import serialization

from trio_ocserv import certgen
from trio_ocserv.auth.certificate import CertificateMethod, CertificateRejected
from trio_ocserv.auth.flow import CheckCredentials, CredentialOutcome
from trio_ocserv.auth.methods import CertificateIdentity, SecretKind
from trio_ocserv.auth.pam import PamMethod
from trio_ocserv.auth.passwd_file import CryptHasher
from trio_ocserv.auth.plain import PlainMethod
from trio_ocserv.auth.registry import AuthSetupError, MethodFactory, build_auth_setup
from trio_ocserv.config.auth_methods import auth_method
from trio_ocserv.config.loader import parse_config_text
from trio_ocserv.config.model import Settings

NOW = time.time()


@attrs.frozen
class NoPam:
    def authenticate(self, username: str, password: str, service: str) -> int:
        return 7


@attrs.frozen
class NoGroups:
    def groups_of(self, username: str) -> tuple[tuple[str, int], ...]:
        return ()

    def all_groups(self) -> tuple[tuple[str, int], ...]:
        return (("staff", 50), ("vpn", 3000))


FACTORY = MethodFactory(pam_service="vpn-test", pam_backend=NoPam(), group_database=NoGroups())


def settings(
    *auth: str,
    enable: tuple[str, ...] = (),
    ca_cert: str | None = None,
    crl: str | None = None,
    cert_user_oid: str | None = None,
    cert_group_oid: str | None = None,
) -> Settings:
    return Settings(
        auth=tuple(auth_method(a) for a in auth),
        enable_auth=tuple(auth_method(e) for e in enable),
        ca_cert=ca_cert,
        crl=crl,
        cert_user_oid=cert_user_oid,
        cert_group_oid=cert_group_oid,
    )


@pytest.fixture
def ca_file(tmp_path: Path) -> tuple[certgen.CertAndKey, Path]:
    ca = certgen.certificate_authority()
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return ca, path


def test_plain_with_otp(tmp_path: Path) -> None:
    passwd, otp = tmp_path / "ocpasswd", tmp_path / "users.otp"
    setup = build_auth_setup(settings(f"plain[passwd={passwd},otp={otp}]"), FACTORY)
    (chain,) = setup.policy.alternatives
    (method,) = chain.methods
    assert isinstance(method, PlainMethod)
    assert (method.passwd_path, method.otp_path) == (str(passwd), str(otp))
    assert chain.secret_kinds == (SecretKind.PASSWORD, SecretKind.OTP)
    assert setup.certificate_verifier is None
    assert not setup.policy.requests_certificate


def test_plain_checks_passwords_end_to_end(tmp_path: Path) -> None:
    passwd = tmp_path / "ocpasswd"
    passwd.write_text(f"alice:eng:{CryptHasher().hash('pw')}\n")
    setup = build_auth_setup(settings(f"plain[passwd={passwd}]"), FACTORY)
    result = setup.policy.primary.check(CheckCredentials("c", "alice", None, 0, "pw"), None, NOW)
    assert (result.outcome, result.group) == (CredentialOutcome.ACCEPTED, "eng")


def test_pam_takes_gid_min_and_the_service_name() -> None:
    setup = build_auth_setup(settings("pam[gid-min=1000]"), FACTORY)
    (method,) = setup.policy.primary.methods
    assert isinstance(method, PamMethod)
    assert (method.service, method.gid_min) == ("vpn-test", 1000)
    assert setup.policy.primary.available_groups() == ("vpn",)
    plain_pam = build_auth_setup(settings("pam"), FACTORY).policy.primary.methods[0]
    assert isinstance(plain_pam, PamMethod)
    assert plain_pam.gid_min == 0


def test_certificate_and_plain_need_both(
    tmp_path: Path, ca_file: tuple[certgen.CertAndKey, Path]
) -> None:
    ca, ca_path = ca_file
    config = settings(
        "certificate",
        f"plain[passwd={tmp_path / 'ocpasswd'}]",
        ca_cert=str(ca_path),
        cert_user_oid="2.5.4.3",
        cert_group_oid="2.5.4.11",
    )
    setup = build_auth_setup(config, FACTORY)
    chain = setup.policy.primary
    assert isinstance(chain.methods[0], CertificateMethod)
    assert chain.methods[0].constrains_groups
    assert chain.requires_certificate
    assert setup.policy.requires_certificate
    verifier = setup.certificate_verifier
    assert verifier is not None
    leaf = certgen.issue(ca, "alice", server=False)
    identity = verifier.identify([leaf.cert.public_bytes(serialization.Encoding.DER)], NOW)
    assert identity == CertificateIdentity("alice", (), identity.subject)
    other = certgen.issue(certgen.certificate_authority(), "alice", server=False)
    with pytest.raises(CertificateRejected):
        verifier.identify([other.cert.public_bytes(serialization.Encoding.DER)], NOW)


def test_enable_auth_lines_are_alternatives(
    tmp_path: Path, ca_file: tuple[certgen.CertAndKey, Path]
) -> None:
    _, ca_path = ca_file
    config = settings(
        f"plain[passwd={tmp_path / 'ocpasswd'}]",
        enable=("certificate",),
        ca_cert=str(ca_path),
        cert_user_oid="0.9.2342.19200300.100.1.1",
        crl=str(tmp_path / "crl.pem"),
    )
    setup = build_auth_setup(config, FACTORY)
    password_chain, certificate_chain = setup.policy.alternatives
    assert certificate_chain.label == "enable-auth[0]"
    assert certificate_chain.flow_steps == ()
    assert setup.policy.select(None) is password_chain
    assert setup.policy.select(CertificateIdentity("alice")) is certificate_chain
    assert setup.policy.requests_certificate
    assert not setup.policy.requires_certificate
    assert setup.certificate_verifier is not None
    assert setup.certificate_verifier.crl is not None


def test_built_from_config_text(tmp_path: Path) -> None:
    passwd = tmp_path / "ocpasswd"
    text = f'auth = "plain[passwd={passwd}]"\ntcp-port = 4443\n'
    config = parse_config_text(text, str(tmp_path / "ocserv.conf"))
    setup = build_auth_setup(config.settings, FACTORY)
    assert setup.policy.primary.secret_kinds == (SecretKind.PASSWORD,)


@pytest.mark.parametrize(
    ("auth", "other", "message"),
    [
        (("radius[config=/etc/radcli/radiusclient.conf]",), {}, "not supported"),
        (("certificate",), {"cert_user_oid": "2.5.4.3"}, "ca-cert"),
        (("certificate",), {"ca_cert": "/nonexistent/ca.pem"}, "cert-user-oid"),
        (
            ("certificate",),
            {"ca_cert": "/nonexistent/ca.pem", "cert_user_oid": "2.5.4.3"},
            "cannot read",
        ),
        (("plain[passwd=/a]", "pam"), {}, "plain and pam"),
        ((), {}, "no auth method"),
    ],
)
def test_setup_errors(auth: tuple[str, ...], other: dict[str, str], message: str) -> None:
    with pytest.raises(AuthSetupError, match=message):
        build_auth_setup(settings(*auth, **other), FACTORY)  # type: ignore[arg-type]


def test_unsupported_enable_auth_is_an_error() -> None:
    with pytest.raises(AuthSetupError, match="gssapi"):
        build_auth_setup(settings("pam", enable=("gssapi",)), FACTORY)
