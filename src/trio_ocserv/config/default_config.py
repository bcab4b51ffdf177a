"""The built-in config used when no -c FILE is given and /etc/ocserv/ocserv.conf does not exist.

The text is package data (`trio_ocserv/data/default-ocserv.conf`) with `@STATE_DIR@` standing for
the state directory: `$TRIO_OCSERV_STATE_DIR`, or /var/lib/trio-ocserv.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources

from trio_ocserv.config.loader import parse_config_text
from trio_ocserv.config.model import ServerConfig

SYSTEM_CONFIG_PATH = "/etc/ocserv/ocserv.conf"
DEFAULT_STATE_DIR = "/var/lib/trio-ocserv"
STATE_DIR_VARIABLE = "TRIO_OCSERV_STATE_DIR"
BUILT_IN_CONFIG_NAME = "<built-in default config>"
"""Shown in place of a file name in messages about the built-in config."""

_STATE_DIR_PLACEHOLDER = "@STATE_DIR@"


def state_dir(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR


def default_config_text(state_directory: str) -> str:
    template = resources.files("trio_ocserv").joinpath("data", "default-ocserv.conf")
    return template.read_text("utf-8").replace(_STATE_DIR_PLACEHOLDER, state_directory)


def load_default_config(state_directory: str | None = None) -> ServerConfig:
    directory = state_dir() if state_directory is None else state_directory
    return parse_config_text(default_config_text(directory), BUILT_IN_CONFIG_NAME)
