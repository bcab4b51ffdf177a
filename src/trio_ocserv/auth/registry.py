"""Build the login methods from a configuration's `auth` and `enable-auth` values.

`build_auth_setup(settings)` returns the `AuthPolicy` (the `auth` chain, then one chain per
`enable-auth` line) and, when any chain uses certificates, the `ClientCertificateVerifier` made
from `ca-cert`, `crl`, `cert-user-oid` and `cert-group-oid`. Problems a server must not start
with (an unsupported method, certificate auth without a usable ca-cert, two password methods in
one chain) raise `AuthSetupError` naming the method.

Reads the ca-cert file (once; a reload builds a new setup); password, OTP and CRL files are read
by the methods when they change. Nothing else is touched.
"""

from __future__ import annotations

import attrs

from trio_ocserv.auth.certificate import (
    CertificateMethod,
    CertificateNaming,
    CertificateSetupError,
    ClientCertificateVerifier,
    CrlFile,
    load_ca_certificates,
)
from trio_ocserv.auth.methods import AuthChain, AuthPolicy, LoginMethod
from trio_ocserv.auth.pam import (
    DEFAULT_PAM_SERVICE,
    GroupDatabase,
    PamBackend,
    PamMethod,
    PythonPamBackend,
    SystemGroupDatabase,
)
from trio_ocserv.auth.passwd_file import PasswordHasher
from trio_ocserv.auth.plain import PlainMethod
from trio_ocserv.config.auth_methods import AuthMethod
from trio_ocserv.config.model import Settings


class AuthSetupError(ValueError):
    """The configured authentication cannot be built; the message names the method."""


@attrs.frozen
class AuthSetup:
    policy: AuthPolicy
    certificate_verifier: ClientCertificateVerifier | None = None


@attrs.frozen
class MethodFactory:
    """What the methods need beyond the config lines; tests inject fakes here."""

    pam_service: str = DEFAULT_PAM_SERVICE
    pam_backend: PamBackend = attrs.field(factory=PythonPamBackend)
    group_database: GroupDatabase = attrs.field(factory=SystemGroupDatabase)
    hasher: PasswordHasher | None = None

    def build(self, method: AuthMethod, settings: Settings) -> LoginMethod:
        if method.name == "plain":
            passwd = method.option("passwd")
            otp = method.option("otp")
            if not isinstance(passwd, str) or not (otp is None or isinstance(otp, str)):
                raise AuthSetupError(f"plain: passwd= (and otp=) must be paths, got {method}")
            return PlainMethod(passwd, otp, self.hasher)
        if method.name == "pam":
            gid_min = method.option("gid-min")
            return PamMethod(
                service=self.pam_service,
                gid_min=gid_min if isinstance(gid_min, int) else 0,
                backend=self.pam_backend,
                groups=self.group_database,
            )
        if method.name == "certificate":
            return CertificateMethod(constrains_groups=settings.cert_group_oid is not None)
        raise AuthSetupError(f"authentication method {method.name!r} is not supported yet")


def build_certificate_verifier(settings: Settings) -> ClientCertificateVerifier:
    if settings.ca_cert is None:
        raise AuthSetupError("certificate: needs ca-cert to verify client certificates")
    if settings.cert_user_oid is None:
        raise AuthSetupError("certificate: needs cert-user-oid (e.g. 2.5.4.3 for the CN)")
    try:
        return ClientCertificateVerifier(
            trust_anchors=load_ca_certificates(settings.ca_cert),
            naming=CertificateNaming(settings.cert_user_oid, settings.cert_group_oid),
            crl=CrlFile(settings.crl) if settings.crl is not None else None,
        )
    except CertificateSetupError as exc:
        raise AuthSetupError(f"certificate: {exc}") from exc


def build_chain(
    methods: tuple[AuthMethod, ...], settings: Settings, factory: MethodFactory, label: str
) -> AuthChain:
    built = tuple(factory.build(method, settings) for method in methods)
    password_methods = [m.name for m in built if m.steps]
    if len(password_methods) > 1:
        names = " and ".join(password_methods)
        raise AuthSetupError(f"{label}: {names} both ask for passwords; use one per chain")
    return AuthChain(built, label)


def build_auth_setup(settings: Settings, factory: MethodFactory | None = None) -> AuthSetup:
    factory = factory if factory is not None else MethodFactory()
    if not settings.auth:
        raise AuthSetupError('no auth method: e.g. auth = "plain[passwd=/etc/ocserv/ocpasswd]"')
    chains = [build_chain(settings.auth, settings, factory, "auth")]
    chains += [
        build_chain((method,), settings, factory, f"enable-auth[{index}]")
        for index, method in enumerate(settings.enable_auth)
    ]
    policy = AuthPolicy(tuple(chains))
    verifier = build_certificate_verifier(settings) if policy.requests_certificate else None
    return AuthSetup(policy, verifier)
