"""`trio-ocserv serve`: options, exit codes, one-line config errors, built-in config, pid file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trio_ocserv import __version__
from trio_ocserv.auth.passwd_file import load_passwd_file
from trio_ocserv.cli import main as cli_main
from trio_ocserv.config import ServerConfig, default_config
from trio_ocserv.server import main as serve_module
from trio_ocserv.server.main import ServeOptions, parse_serve_options, pid_file, serve_main


@pytest.fixture
def ready_config(tmp_path: Path) -> Path:
    """A config `serve -t` accepts: its certificate files exist (their contents are not read)."""
    (tmp_path / "cert.pem").write_text("cert\n")
    (tmp_path / "key.pem").write_text("key\n")
    path = tmp_path / "ocserv.conf"
    path.write_text(
        'auth = "plain[passwd=/etc/ocserv/ocpasswd]"\n'
        "tcp-port = 443\n"
        "udp-port = 443\n"
        f"server-cert = {tmp_path}/cert.pem\n"
        f"server-key = {tmp_path}/key.pem\n"
        "ipv4-network = 10.147.93.0/24\n"
        "run-as-user = root\n"
    )
    return path


BASE_LINES = 7

# (lines appended to the ready config, which of them is wrong (1-based), expected "key: problem")
MALFORMED = [
    ("ipv4-network = 10.0.0.0/33", 1, "ipv4-network: '10.0.0.0/33' is not an IPv4 network"),
    ("ipv4-netmask = 255.0.255.0", 1, "ipv4-netmask: '255.0.255.0' is not a netmask"),
    (
        "ipv6-network = fd00::/64\nipv6-subnet-prefix = 200",
        2,
        "ipv6-subnet-prefix: 200 is out of range 1-128",
    ),
    (
        "ipv6-network = fd00::/64\nipv6-subnet-prefix = 56",
        2,
        "ipv6-subnet-prefix: /56 must be longer than the network's /64",
    ),
    ("ipv6-network = fd00::", 1, "ipv6-network: 'fd00::' needs a /prefix (e.g. fd00::/48)"),
    ("idle-timeout = -5", 1, "idle-timeout: a time must not be negative, got -5"),
    ("cookie-timeout = 5m", 1, "cookie-timeout: expected a time in seconds, got '5m'"),
    ("tcp-port = https", 1, "tcp-port: expected a port number, got 'https'"),
    ("udp-port = 70000", 1, "udp-port: port 70000 is out of range 1-65535"),
    (
        'auth = "ldap[server=x]"',
        1,
        "auth: unknown authentication method 'ldap' "
        "(known: plain, pam, radius, certificate, gssapi, oidc)",
    ),
    ('auth = "plain[password=/x]"', 1, "auth: plain: unknown option 'password'"),
    (
        'enable-auth = "certificate"',
        1,
        "enable-auth: certificate authentication needs cert-user-oid (e.g. 2.5.4.3 for the CN)",
    ),
    ('auth = "pam"', 1, "auth: plain and pam both check passwords; use only one in auth"),
    (
        'acct = "certificate"',
        1,
        "acct: unknown accounting method 'certificate' (known: radius, pam)",
    ),
    ("dpd 90", 1, "expected 'key = value', got 'dpd 90'"),
    ('banner = "Welcome', 1, "banner: unterminated quoted string"),
    ("compression = maybe", 1, "compression: expected true or false, got 'maybe'"),
    ("[vhost:]", 1, "bad virtual host name in '[vhost:]'"),
    (
        "[server:vpn.example.com]",
        1,
        "bad section header '[server:vpn.example.com]'; expected [vhost:NAME]",
    ),
    (
        "route = 10.0.0.0/40",
        1,
        "route: '10.0.0.0/40' is not a route; expected network/prefix or 'default'",
    ),
    ("dns = dns.example.com", 1, "dns: 'dns.example.com' is not an IP address"),
    ("server-cert = /etc/ocserv/other.pem", 1, "server-cert: has no matching server-key line"),
    ("rekey-method = tls", 1, "rekey-method: expected one of ssl, new-tunnel; got 'tls'"),
    ("max-clients = lots", 1, "max-clients: expected a non-negative number, got 'lots'"),
    (
        "cert-user-oid = CN",
        1,
        "cert-user-oid: 'CN' is not an OID such as 2.5.4.3 or SAN(rfc822name)",
    ),
    ("custom-header = no colon", 1, "custom-header: expected 'Header-Name: value', got 'no colon'"),
    ("net-priority = 9", 1, "net-priority: 9 is out of range 0-6"),
    ("run-as-group = no-such-group-x9", 1, "run-as-group: no such group 'no-such-group-x9'"),
    ("run-as-user = no-such-user-x9", 1, "run-as-user: no such user 'no-such-user-x9'"),
    (
        'cert-user-oid = 2.5.4.3\nenable-auth = "certificate"\nca-cert = /nonexistent/ca.pem',
        3,
        "ca-cert: /nonexistent/ca.pem does not exist",
    ),
]


def _write_malformed(ready: Path, added: str) -> Path:
    path = ready.with_name("bad.conf")
    path.write_text(ready.read_text() + added + "\n")
    return path


@pytest.mark.parametrize(
    ("added", "bad_line", "message"),
    MALFORMED,
    ids=[m[2].split(":")[0] + f"-{i}" for i, m in enumerate(MALFORMED)],
)
def test_malformed_config_is_one_line_error_and_exit_1(
    ready_config: Path, capsys: pytest.CaptureFixture[str], added: str, bad_line: int, message: str
) -> None:
    path = _write_malformed(ready_config, added)
    assert serve_main(["-t", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"{path}:{BASE_LINES + bad_line}: {message}"]


@pytest.mark.parametrize(
    ("added", "bad_line", "message"),
    [MALFORMED[0], MALFORMED[9], MALFORMED[15], MALFORMED[18]],
)
def test_malformed_config_in_a_real_process(
    ready_config: Path, added: str, bad_line: int, message: str
) -> None:
    path = _write_malformed(ready_config, added)
    done = subprocess.run(
        [sys.executable, "-m", "trio_ocserv", "serve", "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"{path}:{BASE_LINES + bad_line}: {message}"]


def test_test_config_accepts_a_good_config(
    ready_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve_main(["--test-config", "--config", str(ready_config)]) == 0
    assert capsys.readouterr().err == f"trio-ocserv: {ready_config}: configuration is valid\n"


def test_unknown_key_is_a_warning_and_exit_0(
    ready_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_malformed(ready_config, "frobnicate-level = 11")
    assert serve_main(["-t", "-c", str(path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}:{BASE_LINES + 1}: warning: frobnicate-level: unknown option; ignored"
    assert len(err) == 2


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.conf"
    assert serve_main(["-t", "-c", str(path)]) == 1
    assert capsys.readouterr().err == f"{path}: cannot read the file: No such file or directory\n"


def test_without_config_option_the_system_file_is_used(
    ready_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(default_config, "SYSTEM_CONFIG_PATH", str(ready_config))
    assert serve_main(["-t"]) == 0
    assert str(ready_config) in capsys.readouterr().err


def test_without_config_option_or_system_file_the_built_in_config_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(default_config, "SYSTEM_CONFIG_PATH", str(tmp_path / "absent.conf"))
    state = tmp_path / "state"
    monkeypatch.setenv("TRIO_OCSERV_STATE_DIR", str(state))
    # First start: a self-signed certificate and a first user appear, the password shown once.
    assert serve_main(["-t"]) == 0
    err = capsys.readouterr().err
    assert "first start" in err and "pin-sha256:" in err and "'vpnuser'" in err
    assert "<built-in default config>: configuration is valid" in err
    password = err.split("with the password '")[1].split("'")[0]
    users = load_passwd_file(str(state / "ocpasswd"))
    assert users.verify("vpnuser", password) is not None
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert oct((state / "server-key.pem").stat().st_mode & 0o777) == "0o600"
    # Second start: nothing is made again, nothing printed about it.
    cert = (state / "server-cert.pem").read_bytes()
    assert serve_main(["-t"]) == 0
    assert "first start" not in capsys.readouterr().err
    assert (state / "server-cert.pem").read_bytes() == cert


def test_serving_calls_run_server_with_the_options(
    ready_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[ServerConfig, ServeOptions]] = []

    def fake_run_server(config: ServerConfig, options: ServeOptions) -> int:
        calls.append((config, options))
        return 0

    monkeypatch.setattr(serve_module, "run_server", fake_run_server)
    argv = ["-f", "-c", str(ready_config), "-p", "/run/x.pid", "-d", "3", "--log-stderr"]
    assert serve_main(argv) == 0
    ((config, options),) = calls
    assert config.path == str(ready_config)
    assert options == ServeOptions(
        config_path=str(ready_config),
        foreground=True,
        pid_file="/run/x.pid",
        debug=3,
        log_stderr=True,
    )


def test_unusable_certificate_is_a_one_line_startup_error(
    ready_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The ready_config fixture's certificate files exist but hold no certificate.
    assert serve_main(["-f", "-c", str(ready_config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"trio-ocserv: {ready_config}: ")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", flag]) == 0
    assert capsys.readouterr().out == f"trio-ocserv {__version__}\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["-h"]) == 0
    out = capsys.readouterr().out
    assert "--test-config" in out
    assert "--log-stderr" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "trio-ocserv serve: unrecognized arguments: --bogus"),
        (
            ["-d", "10000"],
            "trio-ocserv serve: argument -d/--debug: "
            "must be a number between 0 and 9999, got '10000'",
        ),
        (
            ["-d", "x"],
            "trio-ocserv serve: argument -d/--debug: must be a number between 0 and 9999, got 'x'",
        ),
        (["-c"], "trio-ocserv serve: argument -c/--config: expected one argument"),
    ],
)
def test_bad_options_exit_1(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve_main(argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == message
    assert err.splitlines()[1].startswith("usage: trio-ocserv serve")


def test_parse_serve_options_defaults() -> None:
    assert parse_serve_options([]) == ServeOptions()


def test_pid_file_holds_our_pid_and_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "ocserv.pid"
    with pid_file(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_pid_file_is_removed_when_the_block_fails(tmp_path: Path) -> None:
    path = tmp_path / "ocserv.pid"
    with pytest.raises(RuntimeError, match="boom"), pid_file(str(path)):
        raise RuntimeError("boom")
    assert not path.exists()


def test_pid_file_replaced_by_another_process_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ocserv.pid"
    with pid_file(str(path)):
        path.write_text("99999999\n")
    assert path.read_text() == "99999999\n"


def test_pid_file_none_does_nothing(tmp_path: Path) -> None:
    with pid_file(None):
        assert list(tmp_path.iterdir()) == []


def test_pid_file_in_missing_directory_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), pid_file(str(tmp_path / "no" / "x.pid")):
        pytest.fail("the block must not run")
