"""ocserv.conf: lexer, parser, typed model, defaults and validation.

Use `load_config(path)` for the main file and `parse_per_user_config(path)` for per-user/per-group
files; both raise `ConfigError` (one line: `FILE:LINE: key: problem`), nothing else, on bad input.
`UserSettingsResolver` gives the settings of one user (group and user files applied).
`check_ready_to_serve(config)` adds the checks that need the system (files, users, required keys).
"""

from trio_ocserv.config.auth_methods import AuthMethod
from trio_ocserv.config.default_config import load_default_config, state_dir
from trio_ocserv.config.effective import (
    PerUserFileCache,
    UserSettings,
    UserSettingsResolver,
    merge_user_settings,
)
from trio_ocserv.config.errors import ConfigError, ConfigWarning, SourceLocation
from trio_ocserv.config.loader import (
    load_config,
    parse_config_text,
    parse_per_user_config,
    parse_per_user_text,
)
from trio_ocserv.config.model import (
    PerUserConfig,
    ServerConfig,
    Settings,
    ValueSources,
    VirtualHost,
)
from trio_ocserv.config.readiness import check_ready_to_serve
from trio_ocserv.config.schema import KEY_SPECS, PER_USER_KEYS, RELOADABLE_KEYS

__all__ = [
    "KEY_SPECS",
    "PER_USER_KEYS",
    "RELOADABLE_KEYS",
    "AuthMethod",
    "ConfigError",
    "ConfigWarning",
    "PerUserConfig",
    "PerUserFileCache",
    "ServerConfig",
    "Settings",
    "SourceLocation",
    "UserSettings",
    "UserSettingsResolver",
    "ValueSources",
    "VirtualHost",
    "check_ready_to_serve",
    "load_config",
    "load_default_config",
    "merge_user_settings",
    "parse_config_text",
    "parse_per_user_config",
    "parse_per_user_text",
    "state_dir",
]
