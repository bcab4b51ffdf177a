"""What the server derives from its settings: login form settings, session and ban limits.

Built once at start (`app.build_state`) and again on every reload (`reload.apply_reload`), so both
derive them the same way.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from trio_ocserv.auth.flow import AuthFlowSettings, SelectableGroup
from trio_ocserv.auth.methods import AuthChain
from trio_ocserv.bans import BanSettings
from trio_ocserv.config.model import Settings
from trio_ocserv.sessions import SessionSettings


def server_cert_sha1_hex(settings: Settings) -> str:
    if not settings.server_cert:
        return ""
    with open(settings.server_cert[0], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    # The webvpnc hint carries the server certificate's SHA-1 (§3.7); not a security check.
    return cert.fingerprint(hashes.SHA1()).hex()


def flow_settings(
    settings: Settings, chain: AuthChain | None = None, server_cert_sha1: str = ""
) -> AuthFlowSettings:
    """The login form settings of one auth chain (its steps; the groups it can offer)."""
    steps = chain.flow_steps if chain is not None else AuthFlowSettings().steps
    auto_groups = (
        chain.available_groups() if chain is not None and settings.auto_select_group else ()
    )
    return AuthFlowSettings(
        steps=steps,
        certificate_required=chain.requires_certificate if chain is not None else False,
        select_groups=tuple(SelectableGroup(g.name, g.label) for g in settings.select_group),
        default_select_group=settings.default_select_group,
        auto_select_groups=tuple(g for g in auto_groups if g != settings.default_select_group),
        pre_login_banner=settings.pre_login_banner,
        banner=settings.banner,
        cookie_timeout=settings.cookie_timeout,
        server_cert_sha1_hex=server_cert_sha1,
    )


def session_settings(settings: Settings) -> SessionSettings:
    return SessionSettings(
        cookie_timeout=float(settings.cookie_timeout),
        session_timeout=float(settings.session_timeout) if settings.session_timeout else None,
        persistent_cookies=settings.persistent_cookies,
        max_clients=settings.max_clients,
        max_same_clients=settings.max_same_clients,
        deny_roaming=settings.deny_roaming,
    )


def ban_settings(settings: Settings) -> BanSettings:
    return BanSettings(
        max_ban_score=settings.max_ban_score,
        ban_reset_time=float(settings.ban_reset_time),
        ban_time=float(settings.min_reauth_time),
        points_wrong_password=settings.ban_points_wrong_password,
        points_connection=settings.ban_points_connection,
        points_kkdcp=settings.ban_points_kkdcp,
    )
