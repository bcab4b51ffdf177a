"""Client certificates: verification against `ca-cert` and `crl`, and the `certificate` method.

- `ClientCertificateVerifier.identify(chain, now)` takes the DER certificates the client sent
  (leaf first) and returns a `CertificateIdentity`, or raises `CertificateRejected`. The chain
  must lead to a certificate of the `ca-cert` file, be valid at `now`, and no certificate in it
  may be listed in a CRL of the `crl` file signed by its issuer. The CRL file is re-read when it
  changes; an unreadable CRL file rejects every certificate (fail closed).
- The user comes from `cert-user-oid`: a subject DN attribute (`2.5.4.3` CN,
  `0.9.2342.19200300.100.1.1` UID) or a SAN field (`SAN(rfc822name)`, `SAN(dnsname)`,
  `SAN(uri)`); the groups are every value of the `cert-group-oid` attribute (e.g. OU `2.5.4.11`).
- `CertificateMethod` is the `certificate` login method: it has no secret step; it admits a login
  only when the request's connection carried a verified certificate naming the login's user (and,
  with `cert-group-oid`, a group from the certificate).

Everything that parses peer bytes raises only `CertificateRejected`. Time comes in as `now`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import threading
from collections.abc import Sequence
from typing import Final

import attrs
from cryptography import x509
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from trio_ocserv.auth.methods import (
    ADMITTED,
    CertificateIdentity,
    LoginAttempt,
    MethodResult,
    SecretKind,
    Verdict,
    settle_group,
)

logger = logging.getLogger(__name__)

MAX_CHAIN_LENGTH: Final = 8
_SAN_FIELDS: Final[dict[str, type[x509.GeneralName]]] = {
    "rfc822name": x509.RFC822Name,
    "dnsname": x509.DNSName,
    "uri": x509.UniformResourceIdentifier,
}
_CLIENT_USAGES: Final = (
    ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
)


class CertificateSetupError(Exception):
    """ca-cert, crl or an OID setting cannot be used (a configuration problem)."""


class CertificateRejected(Exception):
    """The client's certificate does not authenticate anyone; the message says why (for logs)."""


# ---------------------------------------------------------------------------------------------
# naming: user and groups out of a certificate


@attrs.frozen
class CertificateNaming:
    """How to read the user and the groups: `cert-user-oid` and `cert-group-oid`."""

    user_oid: str
    group_oid: str | None = None

    def __attrs_post_init__(self) -> None:
        for oid in (self.user_oid, self.group_oid):
            if oid is not None and _san_field(oid) is None:
                try:
                    x509.ObjectIdentifier(oid)
                except ValueError as exc:
                    raise CertificateSetupError(f"{oid!r} is not an OID: {exc}") from None

    def identity_of(self, cert: x509.Certificate) -> CertificateIdentity:
        users = _values(cert, self.user_oid)
        if not users:
            raise CertificateRejected(f"the certificate has no {self.user_oid} to name the user")
        groups = _values(cert, self.group_oid) if self.group_oid is not None else ()
        return CertificateIdentity(
            user=users[0],
            groups=tuple(dict.fromkeys(groups)),
            subject=cert.subject.rfc4514_string(),
        )


def _san_field(oid: str) -> type[x509.GeneralName] | None:
    lowered = oid.strip().lower()
    if lowered.startswith("san(") and lowered.endswith(")"):
        kind = _SAN_FIELDS.get(lowered[4:-1])
        if kind is None:
            raise CertificateSetupError(f"unsupported SAN field {oid!r}")
        return kind
    return None


def _values(cert: x509.Certificate, oid: str) -> tuple[str, ...]:
    try:
        san_kind = _san_field(oid)
        if san_kind is not None:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            except x509.ExtensionNotFound:
                return ()
            return tuple(str(v) for v in san.value.get_values_for_type(san_kind))  # type: ignore[arg-type]
        attributes = cert.subject.get_attributes_for_oid(x509.ObjectIdentifier(oid))
        return tuple(a.value for a in attributes if isinstance(a.value, str) and a.value)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateRejected(f"unreadable certificate field {oid}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# files: the CA bundle and the CRL


def load_ca_certificates(path: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM bundle (or one DER certificate); all are trust anchors."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise CertificateSetupError(f"cannot read ca-cert {path}: {exc.strerror or exc}") from exc
    try:
        if b"-----BEGIN" in data:
            certificates = tuple(x509.load_pem_x509_certificates(data))
        else:
            certificates = (x509.load_der_x509_certificate(data),)
    except ValueError as exc:
        raise CertificateSetupError(f"ca-cert {path}: not a certificate: {exc}") from exc
    return certificates


def parse_crls(data: bytes, path: str) -> tuple[x509.CertificateRevocationList, ...]:
    """All CRLs of a PEM file (several may be concatenated) or one DER CRL."""
    marker = b"-----BEGIN X509 CRL-----"
    try:
        if marker not in data:
            return (x509.load_der_x509_crl(data),) if data.strip() else ()
        blocks = data.split(marker)[1:]
        return tuple(x509.load_pem_x509_crl(marker + block) for block in blocks)
    except ValueError as exc:
        raise CertificateRejected(f"crl {path}: unreadable: {exc}") from exc


@attrs.define
class CrlFile:
    """The revocation lists of the `crl` file, re-read when its inode, size or mtime changes."""

    path: str
    _crls: tuple[x509.CertificateRevocationList, ...] = attrs.field(init=False, default=())
    _signature: tuple[int, int, int, int] | None = attrs.field(init=False, default=None)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def current(self) -> tuple[x509.CertificateRevocationList, ...]:
        """Raises CertificateRejected when the file is unreadable: no CRL, no login."""
        with self._lock:
            try:
                st = os.stat(self.path)
                signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if signature != self._signature:
                    with open(self.path, "rb") as stream:
                        data = stream.read()
                    self._crls, self._signature = parse_crls(data, self.path), signature
            except OSError as exc:
                self._crls, self._signature = (), None
                raise CertificateRejected(f"cannot read crl {self.path}: {exc}") from exc
            except CertificateRejected:
                self._crls, self._signature = (), None
                raise
            return self._crls


# ---------------------------------------------------------------------------------------------
# verification


def _load_chain(chain_der: Sequence[bytes]) -> list[x509.Certificate]:
    if not chain_der:
        raise CertificateRejected("no certificate")
    if len(chain_der) > MAX_CHAIN_LENGTH:
        raise CertificateRejected(f"certificate chain longer than {MAX_CHAIN_LENGTH}")
    try:
        return [x509.load_der_x509_certificate(bytes(der)) for der in chain_der]
    except ValueError as exc:
        raise CertificateRejected(f"unparsable certificate: {exc}") from None


def _check_client_usage(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise CertificateRejected("a CA certificate cannot log in")
    except x509.ExtensionNotFound:
        pass
    except (ValueError, x509.DuplicateExtension) as exc:
        raise CertificateRejected(f"bad basic constraints: {exc}") from None
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no EKU means any use, as for GnuTLS
    except (ValueError, x509.DuplicateExtension) as exc:
        raise CertificateRejected(f"bad extended key usage: {exc}") from None
    if not any(oid in usage for oid in _CLIENT_USAGES):
        raise CertificateRejected("the certificate is not for client authentication")


@attrs.define
class ClientCertificateVerifier:
    """Verifies client certificates against the `ca-cert` anchors and the `crl` file."""

    trust_anchors: tuple[x509.Certificate, ...]
    naming: CertificateNaming
    crl: CrlFile | None = None

    def __attrs_post_init__(self) -> None:
        if not self.trust_anchors:
            raise CertificateSetupError("ca-cert holds no certificate")

    def identify(self, chain_der: Sequence[bytes], now: float) -> CertificateIdentity:
        """The identity of a verified chain (leaf first); raises CertificateRejected.

        Blocking only for the CRL re-read: run it in a worker thread."""
        certificates = _load_chain(chain_der)
        leaf, intermediates = certificates[0], certificates[1:]
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(self.trust_anchors)))
            .time(when)
            .max_chain_depth(MAX_CHAIN_LENGTH)
            # client certificates seldom follow the Web PKI profile (no SAN, no AKI): the leaf's
            # extensions are checked below instead, the CAs' by the Web PKI rules
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(leaf, intermediates)
        except verification.VerificationError as exc:
            raise CertificateRejected(f"certificate not trusted: {exc}") from None
        try:
            _check_client_usage(leaf)
            if self.crl is not None:
                _check_not_revoked(list(verified.chain), self.crl.current())
            return self.naming.identity_of(leaf)
        except ValueError as exc:  # a field of a trusted certificate that does not parse
            raise CertificateRejected(f"unreadable certificate: {exc}") from None


def _check_not_revoked(
    chain: list[x509.Certificate], crls: Sequence[x509.CertificateRevocationList]
) -> None:
    # chain runs leaf -> anchor; each certificate is looked up in its issuer's CRLs
    for cert, issuer in itertools.pairwise(chain):
        for crl in crls:
            if crl.issuer != cert.issuer:
                continue
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                logger.warning("crl of %s: bad signature, ignored", crl.issuer.rfc4514_string())
                continue
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise CertificateRejected(
                    f"certificate {cert.serial_number:x} of {cert.subject.rfc4514_string()}"
                    " is revoked"
                )


# ---------------------------------------------------------------------------------------------
# the login method


@attrs.frozen
class CertificateMethod:
    """`auth = "certificate"`: admits only a verified certificate of the login's user."""

    # with cert-group-oid the certificate's groups bound the group choice
    constrains_groups: bool = False

    @property
    def name(self) -> str:
        return "certificate"

    @property
    def steps(self) -> tuple[SecretKind, ...]:
        return ()

    @property
    def requires_certificate(self) -> bool:
        return True

    def admit(self, attempt: LoginAttempt, now: float) -> MethodResult:
        identity = attempt.certificate
        if identity is None:
            return MethodResult(Verdict.DENIED, reason="no verified client certificate")
        if identity.user != attempt.username:
            return MethodResult(
                Verdict.DENIED,
                reason=f"certificate user {identity.user!r} is not the login user",
            )
        if not self.constrains_groups:
            return ADMITTED
        return settle_group(attempt.group, identity.groups, default_to_first=False)

    def check(self, attempt: LoginAttempt, step: int, now: float) -> MethodResult:
        return MethodResult(Verdict.ERROR, reason="the certificate method has no secret step")

    def available_groups(self) -> tuple[str, ...]:
        return ()
