"""`trio-ocserv serve`: ocserv's command line, config loading and the pid file.

Options as ocserv: -f/--foreground, -c/--config FILE, -p/--pid-file FILE, -d/--debug N,
-t/--test-config, --log-stderr, -v/--version, -h/--help. Exit status 0 on success, 1 on any failure
(bad option, unreadable or invalid config). Bad input never produces a traceback: every problem is a
one-line message on stderr.

Without -c the config is /etc/ocserv/ocserv.conf, or the built-in default when that file does not
exist. After loading and checking, `run_server` sets up logging (logs.py), takes the sockets
systemd passed, if any (systemd.py), writes the pid file and runs the server (app.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

import attrs
import trio
from OpenSSL import SSL

from trio_ocserv import __version__
from trio_ocserv.config import (
    ConfigError,
    ServerConfig,
    check_ready_to_serve,
    default_config,
    load_config,
    load_default_config,
)
from trio_ocserv.server import app, systemd
from trio_ocserv.server.first_start import ensure_default_state
from trio_ocserv.server.logs import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1


@attrs.frozen
class ServeOptions:
    """The `serve` command-line options after parsing."""

    config_path: str | None = None  # None: the system file or the built-in default
    foreground: bool = False
    pid_file: str | None = None
    debug: int = 0
    test_config: bool = False
    log_stderr: bool = False


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    # argparse exits with status 2 and its own text; ocserv exits 1 on a bad option.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _debug_level(text: str) -> int:
    if not text.isdigit() or int(text) > 9999:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 9999, got {text!r}")
    return int(text)


def _build_parser() -> _ArgumentParser:
    parser = _ArgumentParser(
        prog="trio-ocserv serve",
        description="OpenConnect (AnyConnect protocol) VPN server, a drop-in for ocserv.",
    )
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="do not fork into the background"
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="the configuration file")
    parser.add_argument("-p", "--pid-file", metavar="FILE", help="write the server's PID here")
    parser.add_argument(
        "-d", "--debug", metavar="N", type=_debug_level, default=0, help="debug level 0-9999"
    )
    parser.add_argument(
        "-t", "--test-config", action="store_true", help="check the configuration and exit"
    )
    parser.add_argument("--log-stderr", action="store_true", help="log to stderr, not syslog")
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    return parser


def parse_serve_options(argv: list[str]) -> ServeOptions | None:
    """Parse `serve` arguments; None means -h or -v was handled (printed) and we should exit 0."""
    parser = _build_parser()
    namespace = parser.parse_args(argv)
    if namespace.version:
        sys.stdout.write(f"trio-ocserv {__version__}\n")
        return None
    return ServeOptions(
        config_path=namespace.config,
        foreground=namespace.foreground,
        pid_file=namespace.pid_file,
        debug=namespace.debug,
        test_config=namespace.test_config,
        log_stderr=namespace.log_stderr,
    )


def serve_main(argv: list[str]) -> int:
    try:
        options = parse_serve_options(argv)
    except _UsageError as error:
        sys.stderr.write(f"trio-ocserv serve: {error}\n{_build_parser().format_usage()}")
        return EXIT_FAILURE
    except SystemExit as done:  # -h prints help and exits 0 through argparse
        return EXIT_OK if not done.code else EXIT_FAILURE
    if options is None:
        return EXIT_OK
    try:
        config = load_server_config(options.config_path)
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        return EXIT_FAILURE
    for warning in config.warnings:
        sys.stderr.write(f"{warning}\n")
    problems = check_ready_to_serve(config)
    for problem in problems:
        sys.stderr.write(f"{problem}\n")
    if problems:
        return EXIT_FAILURE
    if options.test_config:
        sys.stderr.write(f"trio-ocserv: {config.path}: configuration is valid\n")
        return EXIT_OK
    return run_server(config, options)


def load_server_config(config_path: str | None) -> ServerConfig:
    """-c FILE; else /etc/ocserv/ocserv.conf; else the built-in default config."""
    if config_path is not None:
        return load_config(config_path)
    if os.path.exists(default_config.SYSTEM_CONFIG_PATH):
        return load_config(default_config.SYSTEM_CONFIG_PATH)
    # The built-in config: its certificate and first user are made on first start.
    directory = default_config.state_dir()
    first = ensure_default_state(directory)
    if first.created_anything:
        sys.stderr.write(first.message())
    return load_default_config(directory)


def run_server(config: ServerConfig, options: ServeOptions) -> int:
    """Run the VPN server until SIGTERM/SIGINT (or `ctl stop now`); returns the exit status."""
    level = options.debug or config.settings.log_level
    configure_logging(level, to_stderr=options.log_stderr)
    try:
        activated = systemd.activated_sockets()
    except systemd.SocketActivationError as error:
        sys.stderr.write(f"trio-ocserv: socket activation: {error}\n")
        return EXIT_FAILURE
    try:
        with pid_file(options.pid_file or config.settings.pid_file):
            trio.run(functools.partial(app.run, config, activated=activated))
    except (OSError, ValueError, SSL.Error, BaseExceptionGroup) as error:
        startup = _startup_error(error)
        if startup is None:
            raise
        sys.stderr.write(f"trio-ocserv: {config.path}: {startup}\n")
        return EXIT_FAILURE
    return EXIT_OK


# What a bad setup (unreadable key, port in use, unsupported auth method) raises at start.
_STARTUP_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, SSL.Error)


def _startup_error(error: BaseException) -> BaseException | None:
    """The startup problem inside `error` (trio may wrap it in an exception group), else None."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, _STARTUP_ERRORS) else None


@contextlib.contextmanager
def pid_file(path: str | None) -> Iterator[None]:
    """Hold `path` containing our PID for the duration of the block (nothing when path is None).

    The file is written atomically (no reader sees it half-written) and removed on exit, unless
    another process has replaced it meanwhile: then it is that process's file, not ours.
    """
    if path is None:
        yield
        return
    pid_text = f"{os.getpid()}\n"
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="ascii") as file:
            file.write(pid_text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as file:
                still_ours = file.read() == pid_text
            if still_ours:
                os.unlink(path)
