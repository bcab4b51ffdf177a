"""Reload planning: fixed options keep their running values, listen changes are flagged, a bad
file or a broken certificate is a `ReloadError` and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_ocserv import certgen
from trio_ocserv.config import load_config, parse_config_text
from trio_ocserv.server.reload import ReloadError, merge_fixed, plan_reload
from trio_ocserv.testing.testbed import write_passwd


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    ca = certgen.certificate_authority()
    certgen.issue(ca, "vpn.test", server=True).write(tmp_path / "cert.pem", tmp_path / "key.pem")
    write_passwd(tmp_path / "passwd", {"bob": ("pw", ())})
    return tmp_path


def text(workdir: Path, extra: str = "", port: int = 4443, user: str = "root") -> str:
    return (
        f'auth = "plain[passwd={workdir}/passwd]"\ntcp-port = {port}\n'
        f"server-cert = {workdir}/cert.pem\nserver-key = {workdir}/key.pem\n"
        f"run-as-user = {user}\nipv4-network = 192.168.5.0/24\n{extra}"
    )


def test_fixed_options_keep_their_running_values(workdir: Path) -> None:
    current = parse_config_text(text(workdir, "banner = a\n"), "x.conf")
    new = parse_config_text(
        text(workdir, "banner = b\nipv4-network = 10.9.0.0/24\n", user="nobody"), "x.conf"
    )
    merged, kept = merge_fixed(current, new)
    assert kept == ("ipv4_network", "run_as_user")
    assert merged.settings.run_as_user == "root"
    assert str(merged.settings.ipv4_network) == "192.168.5.0/24"
    assert merged.settings.banner == "b"


def test_plan_flags_a_listen_change(workdir: Path) -> None:
    path = workdir / "ocserv.conf"
    path.write_text(text(workdir))
    current = load_config(str(path))
    assert not plan_reload(current, str(path)).listen_changed
    path.write_text(text(workdir, port=4444))
    plan = plan_reload(current, str(path))
    assert plan.listen_changed and plan.config.settings.tcp_port == 4444
    assert plan.kept == ()


def test_bad_files_are_reload_errors(workdir: Path) -> None:
    path = workdir / "ocserv.conf"
    path.write_text(text(workdir))
    current = load_config(str(path))
    path.write_text(text(workdir, "dpd = soon\n"))
    with pytest.raises(ReloadError, match="dpd"):
        plan_reload(current, str(path))
    path.unlink()
    with pytest.raises(ReloadError):
        plan_reload(current, str(path))
    path.write_text(text(workdir))
    (workdir / "key.pem").write_text("not a key\n")
    with pytest.raises(ReloadError):
        plan_reload(current, str(path))
