"""Server TLS contexts from ocserv.conf: certificates, CA/CRL, client-certificate mode, the
GnuTLS `tls-priorities` string translated to OpenSSL, and one context per `[vhost:NAME]`.

This module owns the mapping from `Settings` to `TlsServerSettings` and the live set of contexts
(`ServerTlsContexts`, rebuilt when a CRL file changes). It does not open sockets.

`tls-priorities` translation (GnuTLS priority string -> OpenSSL):

* The string is a keyword followed by `:`-separated `+ITEM`, `-ITEM` (`!ITEM`) and `%FLAG` tokens.
  Keywords set the starting lists; ciphers, key exchanges, MACs and versions are then added/removed.

  =========================  =====================================================================
  keyword                    ciphers (in preference order); key exchange; MACs; versions
  =========================  =====================================================================
  NORMAL, SECURE128, LEGACY  AES-256-GCM CHACHA20-POLY1305 AES-256-CCM AES-256-CBC AES-128-GCM
                             AES-128-CCM AES-128-CBC; ECDHE-ECDSA ECDHE-RSA RSA DHE-RSA;
                             AEAD SHA1; TLS1.3 .. TLS1.0
  PERFORMANCE                the same with the AES-128 ciphers first
  SECURE192, SECURE256       AES-256-GCM CHACHA20-POLY1305 AES-256-CCM AES-256-CBC; as NORMAL
  PFS                        NORMAL without RSA key exchange
  NONE                       nothing (everything must be added)
  =========================  =====================================================================

* TLS 1.2 suites: for each enabled cipher (in order), each key exchange, each MAC, the OpenSSL
  suite of that combination if one exists (table `_TLS12_SUITES`), joined into the cipher string.
  TLS 1.3 suites: AES-256-GCM -> TLS_AES_256_GCM_SHA384, CHACHA20-POLY1305 ->
  TLS_CHACHA20_POLY1305_SHA256, AES-128-GCM -> TLS_AES_128_GCM_SHA256, AES-128-CCM ->
  TLS_AES_128_CCM_SHA256 (these need the AEAD "MAC", as in GnuTLS).
* Versions: `VERS-TLS1.2`, `VERS-TLS1.3`, `VERS-ALL`, `VERS-TLS-ALL`. Our floor is TLS 1.2:
  `VERS-TLS1.0/1.1` removals are no-ops, additions warn; `SSL3.0` and `DTLS*` are no-ops.
  A version left with no suite is turned off (warning); nothing left is a `TlsPriorityError`.
* Flags: `%SERVER_PRECEDENCE` -> OP_CIPHER_SERVER_PREFERENCE (absent: the client's order),
  `%NO_TICKETS`/`%NO_TICKETS_TLS12` -> OP_NO_TICKET, `%COMPAT` and `%SAFE_RENEGOTIATION` no-ops
  (OpenSSL is already lenient; renegotiation is off). Other flags warn.
* Known but not offered by our OpenSSL build/security level (3DES-CBC, ARCFOUR-128, CAMELLIA-*,
  CCM-8, NULL, GOST, MD5, PSK/SRP/anon/DSS key exchanges): removing them is a no-op, adding warns.
* `SIGN-*`, `GROUP-*`/`CURVE-*`: OpenSSL's defaults stay; adding is a no-op, removing warns.
  `COMP-NULL`, `CTYPE-*` are no-ops; other compression warns. Unknown tokens warn.

`cisco-client-compat = true` without an explicit `tls-priorities` appends `:-VERS-TLS1.3`, as
ocserv does (protocol.md 2.2). Client certificates are requested only when certificate
authentication is configured: `auth = "certificate"` alone with cisco-client-compat off makes them
required, otherwise optional (protocol.md 2.2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import attrs
from OpenSSL import SSL

from trio_ocserv.config.errors import ConfigWarning, SourceLocation
from trio_ocserv.config.model import ServerConfig, Settings, ValueSources
from trio_ocserv.server.tls import (
    ClientCertMode,
    TlsServerSettings,
    TlsVersion,
    install_sni_callback,
    make_server_context,
)

__all__ = [
    "ServerTlsContexts",
    "TlsConfigError",
    "TlsPriorityError",
    "TranslatedPriorities",
    "client_cert_mode",
    "effective_priorities",
    "server_tls_settings",
    "translate_priorities",
]


class TlsPriorityError(ValueError):
    """A `tls-priorities` string that leaves nothing usable (or has no valid keyword)."""


class TlsConfigError(ValueError):
    """TLS settings that cannot make a server context (no certificate, no CA for cert auth...)."""


# -- the priority tables ------------------------------------------------------------------------

_CIPHERS_NORMAL = (
    "AES-256-GCM",
    "CHACHA20-POLY1305",
    "AES-256-CCM",
    "AES-256-CBC",
    "AES-128-GCM",
    "AES-128-CCM",
    "AES-128-CBC",
)
_CIPHERS_PERFORMANCE = (
    "AES-128-GCM",
    "AES-128-CCM",
    "CHACHA20-POLY1305",
    "AES-128-CBC",
    "AES-256-GCM",
    "AES-256-CCM",
    "AES-256-CBC",
)
_CIPHERS_256 = ("AES-256-GCM", "CHACHA20-POLY1305", "AES-256-CCM", "AES-256-CBC")
_KX_NORMAL = ("ECDHE-ECDSA", "ECDHE-RSA", "RSA", "DHE-RSA")
_KX_PFS = ("ECDHE-ECDSA", "ECDHE-RSA", "DHE-RSA")
_MACS_NORMAL = ("AEAD", "SHA1")
_VERSIONS_ALL = ("TLS1.3", "TLS1.2", "TLS1.1", "TLS1.0")


@attrs.frozen
class _Base:
    ciphers: tuple[str, ...]
    kx: tuple[str, ...]
    macs: tuple[str, ...]
    versions: tuple[str, ...]


_NORMAL = _Base(_CIPHERS_NORMAL, _KX_NORMAL, _MACS_NORMAL, _VERSIONS_ALL)
_KEYWORDS: dict[str, _Base] = {
    "NORMAL": _NORMAL,
    "SECURE128": _NORMAL,
    "LEGACY": _NORMAL,
    "PERFORMANCE": attrs.evolve(_NORMAL, ciphers=_CIPHERS_PERFORMANCE),
    "SECURE192": attrs.evolve(_NORMAL, ciphers=_CIPHERS_256),
    "SECURE256": attrs.evolve(_NORMAL, ciphers=_CIPHERS_256),
    "PFS": attrs.evolve(_NORMAL, kx=_KX_PFS),
    "NONE": _Base((), (), (), ()),
}

# (key exchange, cipher, MAC) -> OpenSSL TLS 1.2 suite name.
_TLS12_SUITES: dict[tuple[str, str, str], str] = {}
for _kx, _prefix in (
    ("ECDHE-ECDSA", "ECDHE-ECDSA-"),
    ("ECDHE-RSA", "ECDHE-RSA-"),
    ("RSA", ""),
    ("DHE-RSA", "DHE-RSA-"),
):
    _TLS12_SUITES[(_kx, "AES-256-GCM", "AEAD")] = f"{_prefix}AES256-GCM-SHA384"
    _TLS12_SUITES[(_kx, "AES-128-GCM", "AEAD")] = f"{_prefix}AES128-GCM-SHA256"
    _TLS12_SUITES[(_kx, "AES-256-CBC", "SHA1")] = f"{_prefix}AES256-SHA"
    _TLS12_SUITES[(_kx, "AES-128-CBC", "SHA1")] = f"{_prefix}AES128-SHA"
    _TLS12_SUITES[(_kx, "AES-128-CBC", "SHA256")] = f"{_prefix}AES128-SHA256"
    if _kx != "ECDHE-RSA":  # OpenSSL has no ECDHE-RSA AES-CCM suites
        _TLS12_SUITES[(_kx, "AES-256-CCM", "AEAD")] = f"{_prefix}AES256-CCM"
        _TLS12_SUITES[(_kx, "AES-128-CCM", "AEAD")] = f"{_prefix}AES128-CCM"
    if _kx != "RSA":  # ChaCha20 is never paired with static RSA
        _TLS12_SUITES[(_kx, "CHACHA20-POLY1305", "AEAD")] = f"{_prefix}CHACHA20-POLY1305"
    # AES-256-CBC HMAC: SHA384 with ECDHE, SHA256 with RSA/DHE (the suites that exist).
    _cbc256_mac = "SHA384" if _kx.startswith("ECDHE") else "SHA256"
    _TLS12_SUITES[(_kx, "AES-256-CBC", _cbc256_mac)] = f"{_prefix}AES256-{_cbc256_mac}"

_TLS13_SUITES: dict[str, str] = {
    "AES-256-GCM": "TLS_AES_256_GCM_SHA384",
    "CHACHA20-POLY1305": "TLS_CHACHA20_POLY1305_SHA256",
    "AES-128-GCM": "TLS_AES_128_GCM_SHA256",
    "AES-128-CCM": "TLS_AES_128_CCM_SHA256",
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CIPHERS_MAPPED = frozenset(_CIPHERS_NORMAL)
_CIPHERS_NOT_OFFERED = _words(
    """
    3DES-CBC ARCFOUR-128 ARCFOUR-40 RC2-40 DES-CBC NULL AES-128-CCM-8 AES-256-CCM-8
    CAMELLIA-128-CBC CAMELLIA-192-CBC CAMELLIA-256-CBC CAMELLIA-128-GCM CAMELLIA-256-GCM
    GOST28147-TC26Z-CNT GOST28147-TC26Z-CFB GOST28147-CPA-CFB GOST28147-CPB-CFB
    GOST28147-CPC-CFB GOST28147-CPD-CFB AES-128-CFB8 AES-192-CFB8 AES-256-CFB8 AES-128-XTS
    AES-256-XTS AES-128-SIV AES-256-SIV AES-192-GCM AES-192-CBC
    """
)
_KX_MAPPED = frozenset(_KX_NORMAL)
_KX_NOT_OFFERED = _words(
    """
    DHE-DSS PSK DHE-PSK ECDHE-PSK RSA-PSK SRP SRP-RSA SRP-DSS ANON-DH ANON-ECDH RSA-EXPORT
    VKO-GOST-12
    """
)
_MACS_MAPPED = frozenset({"AEAD", "SHA1", "SHA256", "SHA384"})
_MACS_NOT_OFFERED = _words(
    """
    MD5 SHA224 SHA512 UMAC-96 UMAC-128 GOSTR341194 STREEBOG-256 STREEBOG-512
    GOST28147-TC26Z-IMIT
    """
)
_VERSIONS_MAPPED = frozenset({"TLS1.2", "TLS1.3"})
_VERSIONS_BELOW_FLOOR = frozenset({"TLS1.0", "TLS1.1"})
_VERSIONS_IGNORED = frozenset({"SSL3.0", "DTLS0.9", "DTLS1.0", "DTLS1.2"})
_NO_OP_FLAGS = frozenset({"COMPAT", "SAFE_RENEGOTIATION"})
_NO_TICKET_FLAGS = frozenset({"NO_TICKETS", "NO_TICKETS_TLS12"})


@attrs.frozen
class TranslatedPriorities:
    """A `tls-priorities` string in OpenSSL terms, ready for `TlsServerSettings`."""

    min_version: TlsVersion
    max_version: TlsVersion
    ciphers: str  # OpenSSL cipher string for TLS 1.2 ("" when TLS 1.2 is off)
    tls13_ciphersuites: str  # "" when TLS 1.3 is off
    server_preference: bool
    options: int
    warnings: tuple[str, ...]


@attrs.define
class _PriorityState:
    ciphers: list[str]
    kx: list[str]
    macs: list[str]
    versions: list[str]
    server_preference: bool = False
    options: int = 0
    warnings: list[str] = attrs.Factory(list)

    def warn(self, token: str, problem: str) -> None:
        self.warnings.append(f"{token}: {problem}")


def _edit(items: list[str], name: str, add: bool) -> None:
    if add and name not in items:
        items.append(name)
    elif not add and name in items:
        items.remove(name)


def _apply_list_token(
    state: _PriorityState,
    token: str,
    items: list[str],
    name: str,
    add: bool,
    mapped: frozenset[str],
    not_offered: frozenset[str],
    all_items: Iterable[str],
) -> bool:
    """Apply `+NAME`/`-NAME`/`±...-ALL` to one list; False when `name` is not of this kind."""
    if name == "ALL":
        if add:
            items.extend(i for i in all_items if i not in items)
        else:
            items.clear()
        return True
    if name in mapped:
        _edit(items, name, add)
        return True
    if name in not_offered:
        if add:
            state.warn(token, "not offered by this server (OpenSSL build/security level); ignored")
        return True
    return False


def _apply_version(state: _PriorityState, token: str, name: str, add: bool) -> None:
    if name in ("ALL", "TLS-ALL"):
        if add:
            _edit(state.versions, "TLS1.3", True)
            _edit(state.versions, "TLS1.2", True)
        else:
            state.versions.clear()
    elif name in _VERSIONS_MAPPED:
        _edit(state.versions, name, add)
    elif name in _VERSIONS_BELOW_FLOOR:
        if add:
            state.warn(token, "TLS 1.0/1.1 are not offered (this server's floor is TLS 1.2)")
    elif name in _VERSIONS_IGNORED or name == "DTLS-ALL":
        pass  # SSL 3.0 is never offered; DTLS is configured elsewhere
    else:
        state.warn(token, "unknown protocol version; ignored")


def _apply_flag(state: _PriorityState, token: str, flag: str) -> None:
    if flag == "SERVER_PRECEDENCE":
        state.server_preference = True
    elif flag in _NO_TICKET_FLAGS:
        state.options |= SSL.OP_NO_TICKET
    elif flag not in _NO_OP_FLAGS:
        state.warn(token, "flag not mapped to OpenSSL; ignored")


def _apply_token(state: _PriorityState, token: str) -> None:
    if token.startswith("%"):
        _apply_flag(state, token, token[1:])
        return
    if token[0] in "+-!":
        add, name = token[0] == "+", token[1:]
    else:
        add, name = True, token
    if name.startswith("VERS-"):
        _apply_version(state, token, name[5:], add)
        return
    for prefix, items, mapped, not_offered, everything in (
        ("CIPHER-", state.ciphers, _CIPHERS_MAPPED, _CIPHERS_NOT_OFFERED, _CIPHERS_NORMAL),
        ("KX-", state.kx, _KX_MAPPED, _KX_NOT_OFFERED, _KX_NORMAL),
        ("MAC-", state.macs, _MACS_MAPPED, _MACS_NOT_OFFERED, ("AEAD", "SHA1", "SHA256", "SHA384")),
    ):
        # Category prefixes are optional for single names (`-RSA`) and required for `-KX-ALL`.
        short = name[len(prefix) :] if name.startswith(prefix) else name
        if short == "ALL" and not name.startswith(prefix):
            continue
        if _apply_list_token(state, token, items, short, add, mapped, not_offered, everything):
            return
    if name.startswith(("SIGN-", "GROUP-", "CURVE-")):
        if not add:
            state.warn(token, "OpenSSL's default signature algorithms/groups stay; ignored")
        return
    if name.startswith("CTYPE-") or name in ("COMP-NULL", "COMP-ALL"):
        return
    if name.startswith("COMP-"):
        if add:
            state.warn(token, "TLS compression is never enabled; ignored")
        return
    state.warn(token, "unknown priority item; ignored")


def translate_priorities(priorities: str) -> TranslatedPriorities:
    """Translate a GnuTLS priority string (see the module docstring for the table)."""
    tokens = [t.strip() for t in priorities.strip().split(":") if t.strip()]
    if not tokens:
        raise TlsPriorityError("empty priority string")
    keyword, *rest = tokens
    base = _KEYWORDS.get(keyword.upper())
    system_default = keyword.startswith("@")
    if base is None and not system_default:
        raise TlsPriorityError(f"{keyword!r} is not a GnuTLS priority keyword (e.g. NORMAL)")
    if base is None:
        base = _NORMAL
    state = _PriorityState(list(base.ciphers), list(base.kx), list(base.macs), list(base.versions))
    if system_default:
        state.warn(keyword, "system priority files are not read; using NORMAL")
    for token in rest:
        _apply_token(state, token)
    return _finish(state)


def _finish(state: _PriorityState) -> TranslatedPriorities:
    tls12 = [
        _TLS12_SUITES[(kx, cipher, mac)]
        for cipher in state.ciphers
        for kx in state.kx
        for mac in state.macs
        if (kx, cipher, mac) in _TLS12_SUITES
    ]
    tls13 = (
        [_TLS13_SUITES[c] for c in state.ciphers if c in _TLS13_SUITES]
        if "AEAD" in state.macs
        else []
    )
    versions = set(state.versions) & _VERSIONS_MAPPED
    if "TLS1.2" in versions and not tls12:
        state.warn("TLS1.2", "no TLS 1.2 cipher suite is left enabled; TLS 1.2 is off")
        versions.discard("TLS1.2")
    if "TLS1.3" in versions and not tls13:
        state.warn("TLS1.3", "no TLS 1.3 cipher suite is left enabled; TLS 1.3 is off")
        versions.discard("TLS1.3")
    if not versions:
        raise TlsPriorityError("no TLS 1.2 or 1.3 version with a usable cipher suite is left")
    return TranslatedPriorities(
        min_version=TlsVersion.TLS1_2 if "TLS1.2" in versions else TlsVersion.TLS1_3,
        max_version=TlsVersion.TLS1_3 if "TLS1.3" in versions else TlsVersion.TLS1_2,
        ciphers=":".join(tls12) if "TLS1.2" in versions else "",
        tls13_ciphersuites=":".join(tls13) if "TLS1.3" in versions else "",
        server_preference=state.server_preference,
        options=state.options,
        warnings=tuple(state.warnings),
    )


# -- Settings -> TlsServerSettings --------------------------------------------------------------


def client_cert_mode(settings: Settings) -> ClientCertMode:
    """Certificate auth alone (and no cisco-client-compat) requires a client certificate; combined
    with other methods, or with cisco-client-compat, it is only requested."""
    names = [m.name for m in (*settings.auth, *settings.enable_auth)]
    if "certificate" not in names:
        return ClientCertMode.NONE
    if names == ["certificate"] and not settings.cisco_client_compat:
        return ClientCertMode.REQUIRED
    return ClientCertMode.OPTIONAL


def effective_priorities(settings: Settings, sources: ValueSources) -> str:
    """The priority string ocserv would use: cisco-client-compat without an explicit
    `tls-priorities` turns TLS 1.3 off."""
    if settings.cisco_client_compat and sources.first("tls-priorities") is None:
        return settings.tls_priorities + ":-VERS-TLS1.3"
    return settings.tls_priorities


def server_tls_settings(
    settings: Settings, sources: ValueSources, section: SourceLocation
) -> tuple[TlsServerSettings, tuple[ConfigWarning, ...]]:
    """Map one server's (or vhost's) settings; warnings carry the `tls-priorities` line."""
    pairs = settings.certificate_pairs
    if not pairs:
        raise TlsConfigError(f"{section}: no server-cert/server-key configured")
    mode = client_cert_mode(settings)
    if mode is not ClientCertMode.NONE and settings.ca_cert is None:
        raise TlsConfigError(f"{section}: certificate authentication needs ca-cert")
    priorities = effective_priorities(settings, sources)
    where = sources.last("tls-priorities") or section
    try:
        translated = translate_priorities(priorities)
    except TlsPriorityError as exc:
        raise TlsConfigError(f"{where}: tls-priorities: {exc}") from exc
    warnings = tuple(ConfigWarning(where, "tls-priorities", w) for w in translated.warnings)
    (cert, key), *more = pairs
    return (
        TlsServerSettings(
            cert_chain_file=cert,
            key_file=key,
            ca_file=settings.ca_cert,
            client_cert=mode,
            min_version=translated.min_version,
            max_version=translated.max_version,
            ciphers=translated.ciphers or None,
            tls13_ciphersuites=translated.tls13_ciphersuites or None,
            server_preference=translated.server_preference,
            extra_cert_pairs=tuple(more),
            crl_file=settings.crl,
            dh_params_file=settings.dh_params,
            extra_options=translated.options,
        ),
        warnings,
    )


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


@attrs.define
class ServerTlsContexts:
    """The live server contexts: the default one (hand it to every new `TlsStream`) and one per
    vhost, chosen by SNI. `reload_if_changed()` rebuilds them all when a CRL file's mtime changes;
    connections already made keep the context they started with."""

    config: ServerConfig
    default: SSL.Context
    by_vhost: dict[str, SSL.Context]
    warnings: tuple[ConfigWarning, ...]
    _crl_mtimes: dict[str, int | None]

    @classmethod
    def build(cls, config: ServerConfig) -> ServerTlsContexts:
        crl_mtimes = {path: _mtime(path) for path in _crl_files(config)}
        default, by_vhost, warnings = _build_contexts(config)
        contexts = cls(config, default, by_vhost, warnings, crl_mtimes)
        contexts._install_sni()
        return contexts

    def context_for(self, server_name: str | None) -> SSL.Context | None:
        """The vhost context for an SNI name (any case), or None for the default server."""
        if server_name is None:
            return None
        return self.by_vhost.get(server_name.lower())

    def reload_if_changed(self) -> bool:
        """Rebuild every context if a CRL file changed since the last build. On a failure (e.g.
        a CRL being rewritten) the old contexts stay and the error propagates; the next call
        retries."""
        current = {path: _mtime(path) for path in self._crl_mtimes}
        if current == self._crl_mtimes:
            return False
        default, by_vhost, warnings = _build_contexts(self.config)
        self.default, self.by_vhost, self.warnings = default, by_vhost, warnings
        self._crl_mtimes = current
        self._install_sni()
        return True

    def _install_sni(self) -> None:
        if self.by_vhost:
            install_sni_callback(self.default, self.context_for)


def _crl_files(config: ServerConfig) -> list[str]:
    every = [config.settings, *(v.settings for v in config.vhosts)]
    return sorted({s.crl for s in every if s.crl is not None})


def _build_contexts(
    config: ServerConfig,
) -> tuple[SSL.Context, dict[str, SSL.Context], tuple[ConfigWarning, ...]]:
    top = SourceLocation(config.path)
    settings, warnings = server_tls_settings(config.settings, config.sources, top)
    default = _make(settings, top)
    by_vhost: dict[str, SSL.Context] = {}
    all_warnings = list(warnings)
    for vhost in config.vhosts:
        vhost_settings, vhost_warnings = server_tls_settings(
            vhost.settings, vhost.sources, vhost.location
        )
        by_vhost[vhost.name.lower()] = _make(vhost_settings, vhost.location)
        all_warnings += vhost_warnings
        if _negotiation(vhost_settings) != _negotiation(settings):
            all_warnings.append(
                ConfigWarning(
                    vhost.sources.last("tls-priorities") or vhost.location,
                    "tls-priorities",
                    "a virtual host uses the default server's TLS versions, TLS 1.3 suites "
                    "and flags (OpenSSL fixes them before SNI is seen); its TLS 1.2 ciphers apply",
                )
            )
    return default, by_vhost, tuple(all_warnings)


def _negotiation(settings: TlsServerSettings) -> tuple[object, ...]:
    """The parts of a context a vhost cannot change after SNI (see `tls` module docstring)."""
    return (
        settings.min_version,
        settings.max_version,
        settings.tls13_ciphersuites,
        settings.server_preference,
        settings.extra_options,
    )


def _make(settings: TlsServerSettings, where: SourceLocation) -> SSL.Context:
    try:
        return make_server_context(settings)
    except (OSError, ValueError, SSL.Error) as exc:
        raise TlsConfigError(f"{where}: cannot load TLS files: {exc}") from exc
