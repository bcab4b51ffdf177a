"""Shared test rules: loopback only, port 0, a hard timeout on every I/O test, cleanup by PID."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


@pytest.fixture
def shared_docs() -> Path:
    if not SHARED_DOCS.is_dir():
        pytest.fail(f"{SHARED_DOCS} is missing: the repo must sit beside shared/")
    return SHARED_DOCS
