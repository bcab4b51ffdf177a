"""openconnect 9.01 logging in to `trio-ocserv serve` through every configured way (issue 3).

Each test starts the server in a network namespace with its own config (one namespace pair for
the module) and runs `openconnect --authenticate` from the client namespace: passwords, groups,
banners, client certificates (alone and with a password), OTP as a second step, the legacy form
mode, bans and max-same-clients.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import pytest
from cryptography.x509.oid import NameOID

from tests.conftest import require_root_tools
from trio_ocserv import certgen
from trio_ocserv.auth.otp import totp
from trio_ocserv.testing import openconnect, testbed
from trio_ocserv.testing.netns import NetnsPair, netns_pair

pytestmark = pytest.mark.e2e

USERS = {
    "alice": ("alice-pass", ("engineering", "sales")),
    "bob": ("bob-pass", ()),
    "carol": ("carol-pass", ("engineering",)),
}
REMOTE_CLIENT = "203.0.113.50"
OTP_KEY = bytes.fromhex("3132333435363738393031323334353637383930")


@pytest.fixture(scope="module")
def pair() -> Iterator[NetnsPair]:
    require_root_tools("openconnect", "ip")
    with netns_pair() as made:
        yield made


@attrs.frozen
class Running:
    pair: NetnsPair
    bed: testbed.TestBed
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client_cert(self, user: str, groups: Sequence[str] = ()) -> tuple[str, str]:
        """A client certificate of our CA naming `user` (UID, the test bed's cert-user-oid)."""
        extra = {NameOID.USER_ID: user}
        if groups:
            extra[NameOID.ORGANIZATIONAL_UNIT_NAME] = groups[0]
        issued = certgen.issue(self.bed.ca, f"{user} client", server=False, extra_subject=extra)
        cert, key = self.bed.workdir / f"{user}.crt", self.bed.workdir / f"{user}.key"
        issued.write(cert, key)
        return str(cert), str(key)

    def authenticate(
        self, user: str | None, secrets: Sequence[str] = (), args: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        """`openconnect --authenticate`, one stdin line per secret (interactive mode, so a second
        prompt such as the OTP reads the next line)."""
        argv = ["openconnect", "--authenticate", "--servercert", self.bed.servercert]
        if secrets:
            argv.append("--passwd-on-stdin")
        else:
            argv.append("--non-inter")
        if user is not None:
            argv += ["--user", user]
        argv += [*args, self.bed.url]
        return subprocess.run(
            self.pair.client.argv(argv),
            input="".join(f"{s}\n" for s in secrets),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@contextlib.contextmanager
def serving(
    pair: NetnsPair, tmp: Path, extra: str = "", auth: Sequence[str] | None = None
) -> Iterator[Running]:
    bed = testbed.make_testbed(tmp / "srv", pair, extra_config=extra, users=USERS, auth=auth)
    log_path = tmp / "server.log"
    argv = [*testbed.trio_ocserv_argv(bed), "--log-stderr"]
    with testbed.running_server(pair.server, argv, log_path, pair.server_addr, 443):
        yield Running(pair, bed, log_path)


def cookie_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    cookie = openconnect.parse_authenticate_output(result.stdout).get("COOKIE", "")
    assert "webvpn=" in cookie
    return cookie


def refused(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "COOKIE=" not in result.stdout


def test_passwords_groups_and_banners(pair: NetnsPair, tmp_path: Path) -> None:
    extra = (
        "select-group = engineering\nselect-group = sales[Sales Team]\n"
        "default-select-group = DEFAULT\n"
        "pre-login-banner = Authorized users only\nbanner = Welcome to trio\n"
    )
    with serving(pair, tmp_path, extra) as run:
        default = ["--authgroup", "DEFAULT"]
        ok = run.authenticate("bob", ["bob-pass"], default)
        cookie_of(ok)
        assert "Authorized users only" in ok.stderr  # the pre-login banner
        assert refused(run.authenticate("bob", ["wrong"], default))
        assert refused(run.authenticate("nobody", ["bob-pass"], default))
        cookie_of(run.authenticate("alice", ["alice-pass"], ["--authgroup", "Sales Team"]))
        # bob is in no group: choosing one is refused after the password
        assert refused(run.authenticate("bob", ["bob-pass"], ["--authgroup", "engineering"]))
        cookie_of(run.authenticate("bob", ["bob-pass"], [*default, "--no-xmlpost"]))
        # the post-login banner: openconnect --authenticate does not print it; a tunnel shows it
        with openconnect.openconnect_tunnel(
            pair.client, run.bed.url, servercert=run.bed.servercert, workdir=tmp_path / "cli",
            user="bob", password="bob-pass", args=[*default, "--no-dtls"],
        ) as client:  # fmt: skip
            assert client.script_env("connect")["CISCO_BANNER"] == "Welcome to trio"
        log = run.log()
    assert "login of 'alice' (group 'sales')" in log
    assert "bob-pass" not in log and "alice-pass" not in log


def test_certificate_only(pair: NetnsPair, tmp_path: Path) -> None:
    with serving(pair, tmp_path, auth=["certificate"]) as run:
        cert, key = run.client_cert("carol")
        cookie_of(run.authenticate(None, args=["-c", cert, "-k", key]))
        assert refused(run.authenticate("carol"))
        log = run.log()
    assert "login of 'carol'" in log and "succeeded" in log


def test_certificate_and_password(pair: NetnsPair, tmp_path: Path) -> None:
    auth = ["certificate", "plain[passwd={workdir}/passwd]"]
    with serving(pair, tmp_path, auth=auth) as run:
        cert, key = run.client_cert("carol")
        cookie_of(run.authenticate("carol", ["carol-pass"], ["-c", cert, "-k", key]))
        # carol's certificate with bob's right password: refused
        assert refused(run.authenticate("bob", ["bob-pass"], ["-c", cert, "-k", key]))
        # a right password without any certificate: refused
        assert refused(run.authenticate("carol", ["carol-pass"]))
        log = run.log()
    assert "certificate user 'carol' is not the login user" in log
    assert "refused (401 No certificate)" in log


def test_otp_second_step(pair: NetnsPair, tmp_path: Path) -> None:
    workdir = tmp_path / "srv"
    auth = ["plain[passwd={workdir}/passwd,otp={workdir}/users.oath]"]
    with serving(pair, tmp_path, auth=auth) as run:
        (workdir / "users.oath").write_text(f"HOTP/T30 bob - {OTP_KEY.hex()}\n")
        code = totp(OTP_KEY, time.time())
        ok = run.authenticate("bob", ["bob-pass", code])
        cookie_of(ok)
        assert "Please enter your OTP password." in ok.stderr
        # the same code again: replay refused
        assert refused(run.authenticate("bob", ["bob-pass", code]))
        log = run.log()
    assert "wrong or replayed OTP" in log


@contextlib.contextmanager
def client_from(pair: NetnsPair, address: str) -> Iterator[None]:
    """Make the client reach the server from `address`, which is on no subnet of the server
    (ocserv never bans its own subnets' addresses)."""
    pair.client.run(["ip", "addr", "add", f"{address}/32", "dev", pair.client_if])
    via = ["dev", pair.client_if, "src", address]
    pair.client.run(["ip", "route", "add", f"{pair.server_addr}/32", *via])
    pair.server.run(["ip", "route", "add", f"{address}/32", "dev", pair.server_if])
    try:
        yield
    finally:
        pair.server.run(["ip", "route", "del", f"{address}/32", "dev", pair.server_if])
        pair.client.run(["ip", "route", "del", f"{pair.server_addr}/32", *via])
        pair.client.run(["ip", "addr", "del", f"{address}/32", "dev", pair.client_if])


def test_ban_after_wrong_passwords(pair: NetnsPair, tmp_path: Path) -> None:
    extra = "max-ban-score = 20\nmin-reauth-time = 60\n"
    with serving(pair, tmp_path, extra) as run:
        # from the server's own subnet: never banned
        assert refused(run.authenticate("bob", ["w1", "w2", "w3"]))
        cookie_of(run.authenticate("bob", ["bob-pass"]))
        with client_from(pair, REMOTE_CLIENT):
            # one connection, three wrong answers: banned after the second
            assert refused(run.authenticate("bob", ["w1", "w2", "w3"]))
            assert refused(run.authenticate("bob", ["bob-pass"]))
        log = run.log()
    assert f"refusing banned address {REMOTE_CLIENT}" in log
    assert f"refusing banned address {pair.client_addr}" not in log


def test_max_same_clients(pair: NetnsPair, tmp_path: Path) -> None:
    with serving(pair, tmp_path, "max-same-clients = 1\n") as run:
        cookie_of(run.authenticate("bob", ["bob-pass"]))
        # the first cookie's session lives on: a fresh login of bob is refused, alice is not
        assert refused(run.authenticate("bob", ["bob-pass"]))
        cookie_of(run.authenticate("alice", ["alice-pass"]))
        log = run.log()
    assert "max-same-clients" in log
