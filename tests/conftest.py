"""Shared test rules: loopback only, port 0, a hard timeout on every I/O test, cleanup by PID."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

SHARED_DOCS = Path(__file__).resolve().parents[2] / "shared" / "docs"
CAPTURES = SHARED_DOCS / "protocol-captures"


def require_root_tools(*tools: str) -> None:
    """e2e tests need root and real tools; missing ones are a failure, never a silent skip."""
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root; run them with `nox -s e2e` as root")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"e2e tests need {', '.join(missing)} installed (nox -s e2e installs them)")


def require_c_module(name: str, *, needs: str = "gcc", data_path: bool = True) -> ModuleType:
    """One of our optional C modules (`trio_ocserv.<name>`). Missing is a failure: `pip install`
    builds it wherever `needs` exist. A data path's tests are skipped, and say so, under
    TRIO_OCSERV_PURE_PYTHON=1 (the admin chose the pure-Python path)."""
    if data_path and os.environ.get("TRIO_OCSERV_PURE_PYTHON"):
        pytest.skip("TRIO_OCSERV_PURE_PYTHON is set: the C data path is not used")
    try:
        return importlib.import_module(f"trio_ocserv.{name}")
    except ImportError as exc:
        pytest.fail(f"trio_ocserv.{name} is not built ({exc}): install {needs}, reinstall")


def require_fastpath() -> ModuleType:
    """The DTLS C data path (trio_ocserv._dtls_fastpath)."""
    return require_c_module("_dtls_fastpath", needs="gcc and libssl-dev")


@pytest.fixture
def shared_docs() -> Path:
    if not SHARED_DOCS.is_dir():
        pytest.fail(f"{SHARED_DOCS} is missing: the repo must sit beside shared/")
    return SHARED_DOCS
