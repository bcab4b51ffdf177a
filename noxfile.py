"""Developer and CI entry points.

`nox` runs lint, typecheck, tests and e2e (e2e needs root; it installs the Debian packages it uses).
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "e2e"]
nox.options.reuse_existing_virtualenvs = True

# Debian 12 packages the end-to-end tests drive for real.
E2E_APT_PACKAGES = [
    "ocserv", "openconnect", "iperf3", "gnutls-bin", "iproute2", "iputils-ping", "iptables",
    "libssl-dev", "gcc",
]
E2E_TOOLS = [
    "ocserv", "ocpasswd", "occtl", "openconnect", "iperf3", "gnutls-cli", "ip", "ss", "ping",
    "iptables",
]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[lint,test]")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, property and in-process integration tests; no root needed."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not e2e", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """Real openconnect/ocserv/gnutls-cli in network namespaces; root only."""
    if os.geteuid() != 0:
        session.error("the e2e session needs root (network namespaces, tun devices)")
    missing = [tool for tool in E2E_TOOLS if shutil.which(tool) is None]
    if missing:
        session.run("apt-get", "update", "-qq", external=True)
        session.run(
            "apt-get", "install", "-y", "-qq", *E2E_APT_PACKAGES,
            external=True, env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "e2e", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with ocserv when it is installed; root only."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run.py", *session.posargs)
