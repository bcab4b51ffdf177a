"""`trio-ocserv serve | ctl | passwd`: the command line.

This module only dispatches; each subcommand lives with the code it drives.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: trio-ocserv {serve,ctl,passwd} [options]

  serve    run the VPN server (ocserv's options: -f -c FILE -p FILE -d N -t --log-stderr -v)
  ctl      control a running server (occtl's commands)
  passwd   manage an ocpasswd-compatible password file (ocpasswd's options)
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        sys.stdout.write(USAGE)
        return 0 if args else 1
    command, rest = args[0], args[1:]
    if command in {"-v", "--version"}:
        from trio_ocserv import __version__

        sys.stdout.write(f"trio-ocserv {__version__}\n")
        return 0
    if command == "serve":
        from trio_ocserv.server.main import serve_main

        return serve_main(rest)
    if command == "passwd":
        from trio_ocserv.auth.passwd_cli import passwd_main

        return passwd_main(rest)
    if command == "ctl":
        from trio_ocserv.ctl.cli import ctl_main

        return ctl_main(rest)
    sys.stderr.write(f"trio-ocserv: unknown command {command!r}\n{USAGE}")
    return 1
