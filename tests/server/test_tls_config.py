"""tls_config: the GnuTLS priority translator, client-certificate mode, and real handshakes against
contexts built from ocserv.conf text (certificates from `trio_ocserv.certgen`, memory streams)."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from trio_ocserv import certgen
from trio_ocserv.config.auth_methods import AuthMethod
from trio_ocserv.config.errors import SourceLocation
from trio_ocserv.config.loader import parse_config_text
from trio_ocserv.config.model import ServerConfig, Settings, ValueSources
from trio_ocserv.server.tls import ClientCertMode, TlsStream, TlsVersion
from trio_ocserv.server.tls_config import (
    _TLS12_SUITES,
    _TLS13_SUITES,
    ServerTlsContexts,
    TlsConfigError,
    TlsPriorityError,
    client_cert_mode,
    effective_priorities,
    server_tls_settings,
    translate_priorities,
)

TIMEOUT = 10
DEFAULT_PRIORITIES = Settings().tls_priorities
TLS13_ALL = (
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:"
    "TLS_AES_128_CCM_SHA256"
)


# -- the priority table ---------------------------------------------------------------------------


def _suites(priorities: str) -> list[str]:
    return [s for s in translate_priorities(priorities).ciphers.split(":") if s]


def test_default_priorities_offer_tls12_and_13_server_order_no_warnings() -> None:
    result = translate_priorities(DEFAULT_PRIORITIES)
    assert (result.min_version, result.max_version) == (TlsVersion.TLS1_2, TlsVersion.TLS1_3)
    assert result.server_preference
    assert result.warnings == ()
    assert result.tls13_ciphersuites == TLS13_ALL
    suites = result.ciphers.split(":")
    # protocol.md 2.2: ocserv with NORMAL picked ECDHE-RSA-AES256-GCM-SHA384 for an RSA server.
    assert suites[:2] == ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"]
    assert "AES256-SHA" in suites  # NORMAL keeps static RSA and CBC-SHA1
    assert not any(s.endswith("SHA256") and "CBC" in s for s in suites)


@pytest.mark.parametrize(
    ("priorities", "min_version", "max_version"),
    [
        (
            "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1",
            TlsVersion.TLS1_2,
            TlsVersion.TLS1_3,
        ),
        ("NORMAL:-VERS-TLS1.3", TlsVersion.TLS1_2, TlsVersion.TLS1_2),
        ("NORMAL:-VERS-ALL:+VERS-TLS1.2", TlsVersion.TLS1_2, TlsVersion.TLS1_2),
        ("NORMAL:-VERS-ALL:+VERS-TLS1.3", TlsVersion.TLS1_3, TlsVersion.TLS1_3),
        ("NORMAL:-VERS-TLS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", TlsVersion.TLS1_2, TlsVersion.TLS1_3),
        ("NORMAL:-VERS-TLS1.2", TlsVersion.TLS1_3, TlsVersion.TLS1_3),
        ("NORMAL:-VERS-TLS1.3:+VERS-TLS1.3", TlsVersion.TLS1_2, TlsVersion.TLS1_3),
    ],
)
def test_version_tokens(priorities: str, min_version: TlsVersion, max_version: TlsVersion) -> None:
    result = translate_priorities(priorities)
    assert (result.min_version, result.max_version) == (min_version, max_version)
    assert result.warnings == ()
    assert (result.ciphers == "") == (min_version is TlsVersion.TLS1_3)
    assert (result.tls13_ciphersuites == "") == (max_version is TlsVersion.TLS1_2)


def test_cipher_reset_to_one_cipher() -> None:
    result = translate_priorities("NORMAL:-CIPHER-ALL:+AES-256-GCM")
    assert result.ciphers.split(":") == [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "AES256-GCM-SHA384",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
    assert result.tls13_ciphersuites == "TLS_AES_256_GCM_SHA384"


def test_none_keyword_builds_exactly_what_is_added() -> None:
    result = translate_priorities("NONE:+VERS-TLS1.2:+AES-128-GCM:+ECDHE-RSA:+AEAD:+SIGN-ALL")
    assert result.ciphers == "ECDHE-RSA-AES128-GCM-SHA256"
    assert result.max_version is TlsVersion.TLS1_2
    assert not result.server_preference


def test_key_exchange_removals() -> None:
    without_rsa = _suites("NORMAL:-RSA")
    assert without_rsa and all(s.startswith(("ECDHE-", "DHE-")) for s in without_rsa)
    assert _suites("PFS") == without_rsa
    without_dhe = _suites("NORMAL:-DHE-RSA")
    assert without_dhe and not any(s.startswith("DHE-") for s in without_dhe)
    assert _suites("NORMAL:-KX-ALL:+ECDHE-ECDSA") == [
        s for s in _suites("NORMAL") if s.startswith("ECDHE-ECDSA-")
    ]


def test_strength_keywords() -> None:
    secure256 = translate_priorities("SECURE256")
    assert secure256.ciphers and "128" not in secure256.ciphers
    assert secure256.tls13_ciphersuites == "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    assert translate_priorities("SECURE128").ciphers == translate_priorities("NORMAL").ciphers
    performance = translate_priorities("PERFORMANCE")
    assert performance.tls13_ciphersuites.startswith("TLS_AES_128_GCM_SHA256:")
    assert performance.ciphers.startswith("ECDHE-ECDSA-AES128-GCM-SHA256:")


def test_mac_tokens() -> None:
    aead_only = _suites("NORMAL:-MAC-ALL:+AEAD")
    assert aead_only and all(("GCM" in s) or ("CCM" in s) or ("CHACHA" in s) for s in aead_only)
    with_sha256 = _suites("NORMAL:+SHA256:+SHA384")
    assert "ECDHE-RSA-AES128-SHA256" in with_sha256
    assert "ECDHE-RSA-AES256-SHA384" in with_sha256
    cbc_only = translate_priorities("NORMAL:-MAC-ALL:+SHA1")
    assert cbc_only.max_version is TlsVersion.TLS1_2  # TLS 1.3 needs AEAD
    assert any("TLS 1.3 is off" in w for w in cbc_only.warnings)
    assert all(s.endswith("-SHA") for s in cbc_only.ciphers.split(":"))


@pytest.mark.parametrize(
    "removal",
    [
        "-ARCFOUR-128",
        "-3DES-CBC",
        "-CAMELLIA-128-CBC",
        "-CAMELLIA-256-GCM",
        "!ARCFOUR-128",
        "-VERS-SSL3.0",
        "-VERS-DTLS1.0",
        "-COMP-ALL",
        "+COMP-NULL",
        "+SIGN-RSA-SHA256",
        "+GROUP-SECP256R1",
        "+CURVE-ALL",
        "%COMPAT",
        "%SAFE_RENEGOTIATION",
        "-MD5",
        "+CTYPE-X509",
    ],
)
def test_no_op_tokens_change_nothing_and_do_not_warn(removal: str) -> None:
    assert translate_priorities(f"NORMAL:{removal}") == translate_priorities("NORMAL")


@pytest.mark.parametrize(
    ("token", "text"),
    [
        ("+3DES-CBC", "not offered"),
        ("+ARCFOUR-128", "not offered"),
        ("+CAMELLIA-256-GCM", "not offered"),
        ("+PSK", "not offered"),
        ("+VERS-TLS1.0", "TLS 1.2"),
        ("+VERS-TLS1.1", "TLS 1.2"),
        ("-SIGN-ALL", "signature"),
        ("-GROUP-X25519", "groups"),
        ("+COMP-DEFLATE", "compression"),
        ("%NO_EXTENSIONS", "flag"),
        ("%DUMBFW", "flag"),
        ("+WHATEVER", "unknown"),
        ("-VERS-TLS9.9", "unknown"),
    ],
)
def test_unmapped_tokens_warn_with_their_text(token: str, text: str) -> None:
    result = translate_priorities(f"NORMAL:{token}")
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith(f"{token}: ")
    assert text in result.warnings[0]


def test_flags() -> None:
    assert translate_priorities("NORMAL:%NO_TICKETS").options == SSL.OP_NO_TICKET
    assert translate_priorities("NORMAL").options == 0
    assert not translate_priorities("NORMAL").server_preference
    assert translate_priorities("NORMAL:%SERVER_PRECEDENCE").server_preference


@pytest.mark.parametrize(
    "priorities", ["", "BOGUS:+AES-128-GCM", "NORMAL:-VERS-ALL", "NORMAL:-CIPHER-ALL", "NONE"]
)
def test_unusable_priorities_raise(priorities: str) -> None:
    with pytest.raises(TlsPriorityError):
        translate_priorities(priorities)


def test_system_keyword_falls_back_to_normal_with_warning() -> None:
    result = translate_priorities("@SYSTEM")
    assert result.ciphers == translate_priorities("NORMAL").ciphers
    assert len(result.warnings) == 1


def test_every_mapped_suite_name_is_known_to_openssl() -> None:
    for name in _TLS12_SUITES.values():
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_tls13_ciphersuites(b"")
        ctx.set_cipher_list(name.encode())  # raises SSL.Error when nothing matches
        assert SSL.Connection(ctx).get_cipher_list() == [name]
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_tls13_ciphersuites(":".join(_TLS13_SUITES.values()).encode())
    ctx.set_cipher_list(b"aNULL")  # leaves no TLS 1.2 suite the list could show
    assert set(SSL.Connection(ctx).get_cipher_list()) >= set(_TLS13_SUITES.values())


_TOKEN = st.one_of(
    st.sampled_from(["+", "-", "!", "%", ""]).flatmap(
        lambda op: st.sampled_from(
            [
                "VERS-TLS1.2",
                "VERS-TLS1.3",
                "VERS-ALL",
                "CIPHER-ALL",
                "AES-128-GCM",
                "RSA",
                "KX-ALL",
                "MAC-ALL",
                "AEAD",
                "SHA1",
                "SERVER_PRECEDENCE",
                "3DES-CBC",
                "SIGN-ALL",
            ]
        ).map(lambda item: op + item)
    ),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["NORMAL", "NONE", "SECURE256", "x"]), st.lists(_TOKEN, max_size=8))
def test_any_priority_string_translates_or_raises_our_error(
    keyword: str, tokens: list[str]
) -> None:
    try:
        result = translate_priorities(":".join([keyword, *tokens]))
    except TlsPriorityError:
        return
    assert result.ciphers or result.tls13_ciphersuites


# -- client certificate mode and cisco-client-compat ---------------------------------------------


def _methods(*names: str) -> tuple[AuthMethod, ...]:
    return tuple(AuthMethod(n) for n in names)


@pytest.mark.parametrize(
    ("auth", "enable_auth", "cisco", "mode"),
    [
        (("certificate",), (), False, ClientCertMode.REQUIRED),
        (("certificate",), (), True, ClientCertMode.OPTIONAL),
        (("plain",), ("certificate",), False, ClientCertMode.OPTIONAL),
        (("certificate", "plain"), (), False, ClientCertMode.OPTIONAL),
        (("certificate",), ("pam",), False, ClientCertMode.OPTIONAL),
        (("plain",), (), False, ClientCertMode.NONE),
        (("pam",), ("gssapi",), True, ClientCertMode.NONE),
    ],
)
def test_client_cert_mode(
    auth: tuple[str, ...], enable_auth: tuple[str, ...], cisco: bool, mode: ClientCertMode
) -> None:
    settings = Settings(
        auth=_methods(*auth), enable_auth=_methods(*enable_auth), cisco_client_compat=cisco
    )
    assert client_cert_mode(settings) is mode


def test_cisco_client_compat_turns_tls13_off_only_without_explicit_priorities() -> None:
    auth = 'auth = "plain[passwd=/dev/null]"\n'
    implicit = parse_config_text(auth + "cisco-client-compat = true\n", "/c.conf")
    assert effective_priorities(implicit.settings, implicit.sources).endswith(":-VERS-TLS1.3")
    explicit = parse_config_text(
        f'{auth}cisco-client-compat = true\ntls-priorities = "{DEFAULT_PRIORITIES}"\n', "/c.conf"
    )
    assert effective_priorities(explicit.settings, explicit.sources) == DEFAULT_PRIORITIES
    plain = parse_config_text(auth + "cisco-client-compat = false\n", "/c.conf")
    assert effective_priorities(plain.settings, plain.sources) == DEFAULT_PRIORITIES


def test_settings_errors() -> None:
    where = SourceLocation("/c.conf")
    with pytest.raises(TlsConfigError, match="server-cert"):
        server_tls_settings(Settings(), ValueSources(), where)
    cert_auth = Settings(
        auth=_methods("certificate"), server_cert=("/c.pem",), server_key=("/c.key",)
    )
    with pytest.raises(TlsConfigError, match="ca-cert"):
        server_tls_settings(cert_auth, ValueSources(), where)


# -- real contexts from config text ---------------------------------------------------------------


@attrs.frozen
class Pki:
    base: Path
    ca: certgen.CertAndKey
    clients: dict[str, certgen.CertAndKey]

    def path(self, name: str) -> str:
        return str(self.base / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca = certgen.certificate_authority()
    (base / "ca.pem").write_bytes(ca.cert_pem)
    certgen.issue(ca, "vpn.example", server=True, alt_names=["vpn.example"]).write(
        base / "ec.pem", base / "ec.key"
    )
    certgen.issue(ca, "other.example", server=True, alt_names=["other.example"]).write(
        base / "other.pem", base / "other.key"
    )
    _rsa_server(ca).write(base / "rsa.pem", base / "rsa.key")
    clients = {}
    for name in ("alice", "bob"):
        clients[name] = certgen.issue(ca, name, server=False)
        clients[name].write(base / f"{name}.pem", base / f"{name}.key")
    _write_crl(base / "crl.pem", ca, [])
    return Pki(base, ca, clients)


def _rsa_server(ca: certgen.CertAndKey) -> certgen.CertAndKey:
    """certgen issues EC leaves; re-sign the same subject over an RSA key for the RSA slot."""
    ec_leaf = certgen.issue(ca, "vpn.example", server=True, alt_names=["vpn.example"])
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(ec_leaf.cert.subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    for extension in ec_leaf.cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return certgen.CertAndKey(builder.sign(ca.key, hashes.SHA256()), key)


def _write_crl(path: Path, ca: certgen.CertAndKey, revoked: list[x509.Certificate]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=1))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=1))
            .build()
        )
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    crl = builder.sign(ca.key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    # Make sure the mtime moves even on filesystems with coarse timestamps.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def _config(pki: Pki, text: str) -> ServerConfig:
    text = text.replace("$", str(pki.base) + "/")
    if not text.startswith("auth"):
        text = 'auth = "plain[passwd=/dev/null]"\n' + text
    return parse_config_text(text, str(pki.base / "ocserv.conf"))


CERT_AUTH = """\
auth = "certificate"
cert-user-oid = 2.5.4.3
server-cert = $ec.pem
server-key = $ec.key
ca-cert = $ca.pem
"""


def _client_ctx(pki: Pki, cert: str | None = None, ciphers: str | None = None) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(pki.path("ca.pem"))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    if ciphers is not None:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(ciphers.encode())
    if cert is not None:
        ctx.use_certificate_file(pki.path(f"{cert}.pem"))
        ctx.use_privatekey_file(pki.path(f"{cert}.key"))
    return ctx


async def _connect(
    server_ctx: SSL.Context, client_ctx: SSL.Context, sni: str = "vpn.example"
) -> tuple[TlsStream, TlsStream] | None:
    """Handshake and one client->server byte; None when the server refused the client."""
    server_transport, client_transport = trio.testing.memory_stream_pair()
    server = TlsStream(server_transport, server_ctx)
    client = TlsStream(client_transport, client_ctx, server_side=False, server_hostname=sni)
    refused = False

    async def client_side() -> None:
        try:
            await client.do_handshake()
            await client.send_all(b"x")
            # TLS 1.3: a rejected client certificate shows up as an alert on the next read.
            await client.receive_some()
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        try:
            assert await server.receive_some() == b"x"
            await server.send_all(b"y")
        except trio.BrokenResourceError:
            refused = True
    return None if refused else (server, client)


async def test_certificate_auth_alone_requires_a_client_certificate(pki: Pki) -> None:
    contexts = ServerTlsContexts.build(_config(pki, CERT_AUTH))
    with trio.fail_after(TIMEOUT):
        connected = await _connect(contexts.default, _client_ctx(pki, cert="alice"))
        assert connected is not None
        peer = connected[0].peer_certificate()
        assert peer is not None and peer.serial_number == pki.clients["alice"].cert.serial_number
        assert await _connect(contexts.default, _client_ctx(pki)) is None


async def test_certificate_auth_with_cisco_compat_makes_it_optional(pki: Pki) -> None:
    contexts = ServerTlsContexts.build(_config(pki, CERT_AUTH + "cisco-client-compat = true\n"))
    with trio.fail_after(TIMEOUT):
        connected = await _connect(contexts.default, _client_ctx(pki))
        assert connected is not None
        assert connected[0].peer_certificate() is None


async def test_crl_revocation_and_reload_after_the_file_changes(pki: Pki, tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    _write_crl(crl, pki.ca, [pki.clients["bob"].cert])
    contexts = ServerTlsContexts.build(_config(pki, CERT_AUTH + f"crl = {crl}\n"))
    with trio.fail_after(TIMEOUT):
        assert await _connect(contexts.default, _client_ctx(pki, cert="alice")) is not None
        assert await _connect(contexts.default, _client_ctx(pki, cert="bob")) is None
        assert contexts.reload_if_changed() is False

        _write_crl(crl, pki.ca, [pki.clients["alice"].cert])
        old_default = contexts.default
        assert contexts.reload_if_changed() is True
        assert contexts.default is not old_default
        assert await _connect(contexts.default, _client_ctx(pki, cert="alice")) is None
        assert await _connect(contexts.default, _client_ctx(pki, cert="bob")) is not None
        assert contexts.reload_if_changed() is False


async def test_crl_of_another_issuer_does_not_block_clients(pki: Pki, tmp_path: Path) -> None:
    # GnuTLS (ocserv) accepts a chain whose issuer has no CRL; OpenSSL alone would refuse it.
    other_ca = certgen.certificate_authority("another CA")
    crl = tmp_path / "crl.pem"
    _write_crl(crl, other_ca, [pki.clients["alice"].cert])
    contexts = ServerTlsContexts.build(_config(pki, CERT_AUTH + f"crl = {crl}\n"))
    with trio.fail_after(TIMEOUT):
        assert await _connect(contexts.default, _client_ctx(pki, cert="alice")) is not None


async def test_der_crl_is_loaded(pki: Pki, tmp_path: Path) -> None:
    pem = tmp_path / "crl.pem"
    _write_crl(pem, pki.ca, [pki.clients["bob"].cert])
    der = tmp_path / "crl.der"
    der.write_bytes(
        x509.load_pem_x509_crl(pem.read_bytes()).public_bytes(serialization.Encoding.DER)
    )
    contexts = ServerTlsContexts.build(_config(pki, CERT_AUTH + f"crl = {der}\n"))
    with trio.fail_after(TIMEOUT):
        assert await _connect(contexts.default, _client_ctx(pki, cert="bob")) is None


async def test_broken_crl_keeps_the_old_contexts(pki: Pki, tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    _write_crl(crl, pki.ca, [pki.clients["bob"].cert])
    contexts = ServerTlsContexts.build(_config(pki, CERT_AUTH + f"crl = {crl}\n"))
    old_default = contexts.default
    crl.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated")
    with pytest.raises(TlsConfigError, match=r"crl\.pem"):
        contexts.reload_if_changed()
    assert contexts.default is old_default
    _write_crl(crl, pki.ca, [])
    assert contexts.reload_if_changed() is True


async def _stdlib_client_version(pki: Pki, config: ServerConfig) -> str:
    """Handshake a default stdlib client (offers TLS 1.3 and 1.2); the version both agreed on."""
    client_ctx = ssl.create_default_context(cafile=pki.path("ca.pem"))
    server_transport, client_transport = trio.testing.memory_stream_pair()
    server = TlsStream(server_transport, ServerTlsContexts.build(config).default)
    client = trio.SSLStream(client_transport, client_ctx, server_hostname="vpn.example")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    version = client.version()
    assert version == server.tls_version
    return str(version)


async def test_cisco_client_compat_serves_tls12_to_a_tls13_client(pki: Pki) -> None:
    cert = "server-cert = $ec.pem\nserver-key = $ec.key\n"
    with trio.fail_after(TIMEOUT):
        compat = _config(pki, cert + "cisco-client-compat = true\n")
        assert await _stdlib_client_version(pki, compat) == "TLSv1.2"
        assert await _stdlib_client_version(pki, _config(pki, cert)) == "TLSv1.3"
        # An explicit tls-priorities wins over the compat default, as in ocserv.
        explicit = _config(
            pki, cert + f'cisco-client-compat = true\ntls-priorities = "{DEFAULT_PRIORITIES}"\n'
        )
        assert await _stdlib_client_version(pki, explicit) == "TLSv1.3"


@pytest.mark.parametrize(
    ("client_ciphers", "key_type"),
    [
        ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
        ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
    ],
)
async def test_rsa_and_ecdsa_certificates_side_by_side(
    pki: Pki, client_ciphers: str, key_type: type
) -> None:
    config = _config(
        pki,
        "server-cert = $rsa.pem\nserver-key = $rsa.key\n"
        "server-cert = $ec.pem\nserver-key = $ec.key\n",
    )
    contexts = ServerTlsContexts.build(config)
    with trio.fail_after(TIMEOUT):
        connected = await _connect(contexts.default, _client_ctx(pki, ciphers=client_ciphers))
        assert connected is not None
        server_cert = connected[1].peer_certificate()
        assert server_cert is not None
        assert isinstance(server_cert.public_key(), key_type)


VHOSTS = """\
auth = "plain[passwd=/dev/null]"
server-cert = $ec.pem
server-key = $ec.key
[vhost:Other.Example]
auth = "certificate"
cert-user-oid = 2.5.4.3
server-cert = $other.pem
server-key = $other.key
ca-cert = $ca.pem
tls-priorities = "NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.3:+UNKNOWN-THING"
"""


async def test_vhost_context_chosen_by_sni_with_its_client_cert_mode(pki: Pki) -> None:
    contexts = ServerTlsContexts.build(_config(pki, VHOSTS))
    with trio.fail_after(TIMEOUT):
        # The client verifies the host name: success proves which certificate was served.
        connected = await _connect(contexts.default, _client_ctx(pki), sni="vpn.example")
        assert connected is not None and connected[0].server_name == "vpn.example"
        connected = await _connect(
            contexts.default, _client_ctx(pki, cert="alice"), sni="other.example"
        )
        assert connected is not None
        assert connected[0].peer_certificate() is not None
        # The vhost requires a client certificate even though the default server does not.
        assert await _connect(contexts.default, _client_ctx(pki), sni="other.example") is None
    assert contexts.context_for("OTHER.example") is contexts.by_vhost["other.example"]
    assert contexts.context_for("vpn.example") is None
    assert contexts.context_for(None) is None


def test_warnings_carry_the_tls_priorities_line(pki: Pki) -> None:
    contexts = ServerTlsContexts.build(_config(pki, VHOSTS))
    where = {str(w.location) for w in contexts.warnings}
    assert where == {f"{pki.base}/ocserv.conf:10"}
    problems = " | ".join(w.problem for w in contexts.warnings)
    assert "+UNKNOWN-THING" in problems
    assert "default server's TLS versions" in problems
    assert all(w.key == "tls-priorities" for w in contexts.warnings)


def test_unloadable_files_are_config_errors(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="cannot load"):
        ServerTlsContexts.build(_config(pki, "server-cert = $ec.pem\nserver-key = $other.key\n"))
    with pytest.raises(TlsConfigError, match="cannot load"):
        ServerTlsContexts.build(_config(pki, "server-cert = $nope.pem\nserver-key = $ec.key\n"))


DH_PARAMS = Path(__file__).parent / "data" / "ffdhe3072.pem"  # RFC 7919 group, from certtool


async def test_dh_params_are_loaded_and_dhe_works(pki: Pki) -> None:
    # (OpenSSL 3 also offers DHE without dh-params, from its built-in groups: this checks the
    # file loads and a DHE-only client still gets through.)
    rsa_cert = "server-cert = $rsa.pem\nserver-key = $rsa.key\n"
    dhe_only = _client_ctx(pki, ciphers="DHE-RSA-AES128-GCM-SHA256")
    with trio.fail_after(TIMEOUT):
        with_dh = ServerTlsContexts.build(_config(pki, rsa_cert + f"dh-params = {DH_PARAMS}\n"))
        connected = await _connect(with_dh.default, dhe_only)
        assert connected is not None
        assert connected[0].cipher == "DHE-RSA-AES128-GCM-SHA256"
    with pytest.raises(TlsConfigError, match="cannot load"):
        ServerTlsContexts.build(_config(pki, rsa_cert + "dh-params = $ca.pem\n"))


async def test_reload_keeps_sni_working(pki: Pki, tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    _write_crl(crl, pki.ca, [])
    vhosts = VHOSTS.replace("[vhost:", f"crl = {crl}\nca-cert = $ca.pem\n[vhost:")
    contexts = ServerTlsContexts.build(_config(pki, vhosts))
    _write_crl(crl, pki.ca, [pki.clients["bob"].cert])
    assert contexts.reload_if_changed() is True
    with trio.fail_after(TIMEOUT):
        # Host-name verification in the client proves the vhost's certificate was served.
        connected = await _connect(
            contexts.default, _client_ctx(pki, cert="alice"), sni="other.example"
        )
        assert connected is not None
        assert connected[0].connection.get_context() is contexts.by_vhost["other.example"]


async def test_vhost_tls12_ciphers_apply_without_a_warning(pki: Pki) -> None:
    tls12 = "NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.3"
    text = VHOSTS.replace(
        '"NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.3:+UNKNOWN-THING"',
        f'"{tls12}:-CIPHER-ALL:+AES-128-GCM"',
    ).replace("server-key = $ec.key\n", f'server-key = $ec.key\ntls-priorities = "{tls12}"\n', 1)
    contexts = ServerTlsContexts.build(_config(pki, text))
    assert contexts.warnings == ()
    with trio.fail_after(TIMEOUT):
        default = await _connect(contexts.default, _client_ctx(pki), sni="vpn.example")
        assert default is not None and default[0].cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
        vhost = await _connect(contexts.default, _client_ctx(pki, cert="bob"), sni="other.example")
        assert vhost is not None and vhost[0].cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
