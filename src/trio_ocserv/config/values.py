"""Parsers for ocserv.conf values: text in, a typed value out, `ValueProblem` for bad text.

Each parser takes the (unquoted) value text and returns a plain Python or `ipaddress` value, or one
of the small attrs classes below. They do not know the key or the line; the loader adds those.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Literal

import attrs

from trio_ocserv.config.errors import ValueProblem
from trio_ocserv.protocol.compress.negotiate import parse_algorithm_priorities

Route = IPv4Network | IPv6Network | Literal["default"]
"""A `route`/`no-route`/`iroute` value: a network, or `default` (everything through the VPN)."""

IpAddress = IPv4Address | IPv6Address

_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_DIGITS = re.compile(r"[0-9]+")
_OID = re.compile(r"[0-9]+(\.[0-9]+)+")
_SAN_OID = re.compile(r"SAN\((rfc822name|dnsname|uri)\)", re.IGNORECASE)
_GROUP_CHOICE = re.compile(r"(?P<name>[^\[\]]+?)\s*(\[(?P<label>[^\[\]]*)\])?")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n]*")
_KKDCP_SERVER = re.compile(
    r"(?P<proto>udp|tcp)@(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(?P<port>[0-9]+)"
)
_PORT_RULE = re.compile(r"\s*(tcp|udp|sctp|icmp|icmpv6)\(\s*([0-9]{0,5})\s*\)\s*")


@attrs.frozen
class GroupChoice:
    """A `select-group` entry: the group name and the label the client shows (`name[Label]`)."""

    name: str
    label: str | None = None

    @property
    def shown_name(self) -> str:
        return self.label or self.name


@attrs.frozen
class NetPriority:
    """`net-priority`: a socket priority 0-6, or an IP TOS byte when written in hex (`0x20`)."""

    value: int
    is_tos: bool = False


@attrs.frozen
class KkdcpEndpoint:
    """`kkdcp = "PATH REALM proto@host:port"`: an MS-KKDCP URL path forwarded to a KDC."""

    url_path: str
    realm: str
    protocol: Literal["udp", "tcp"]
    host: str
    port: int


def text(value: str) -> str:
    """Any string, verbatim (banners, priority strings, commands)."""
    return value


def compression_priorities(value: str) -> str:
    """`lzs:100` or `oc-lz4:90,lzs:80`-style algorithm priorities, checked here, kept as text."""
    try:
        parse_algorithm_priorities(value)
    except ValueError as exc:
        raise ValueProblem(str(exc)) from None
    return value


def path(value: str) -> str:
    """A file or directory name; only emptiness is checked here (existence is checked at start)."""
    if not value:
        raise ValueProblem("expected a file name, got an empty value")
    return value


def name(value: str) -> str:
    """A single word such as a user, group or device name."""
    if not value or any(c.isspace() for c in value):
        raise ValueProblem(f"expected a name without spaces, got {value!r}")
    return value


def boolean(value: str) -> bool:
    word = value.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueProblem(f"expected true or false, got {value!r}")


def count(value: str) -> int:
    """A non-negative integer."""
    if value.startswith("-") and _DIGITS.fullmatch(value[1:]):
        raise ValueProblem(f"must not be negative, got {value}")
    if not _DIGITS.fullmatch(value):
        raise ValueProblem(f"expected a non-negative number, got {value!r}")
    return int(value)


def seconds(value: str) -> int:
    """A time in whole seconds (ocserv takes no unit suffixes)."""
    if value.startswith("-") and _DIGITS.fullmatch(value[1:]):
        raise ValueProblem(f"a time must not be negative, got {value}")
    if not _DIGITS.fullmatch(value):
        raise ValueProblem(f"expected a time in seconds, got {value!r}")
    return int(value)


def port(value: str) -> int:
    if not _DIGITS.fullmatch(value):
        raise ValueProblem(f"expected a port number, got {value!r}")
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueProblem(f"port {number} is out of range 1-65535")
    return number


def host_port(value: str) -> str:
    """`HOST:PORT` (`[V6]:PORT` for IPv6) for a listening socket; kept as text, checked here."""
    host, sep, number = value.rpartition(":")
    if not sep or not host:
        raise ValueProblem(f"expected HOST:PORT, got {value!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not host or any(c.isspace() or c in "[]" for c in host) or (":" in host) != bracketed:
        raise ValueProblem(f"expected HOST:PORT (an IPv6 address in brackets), got {value!r}")
    port(number)
    return value


def ranged(low: int, high: int) -> Callable[[str], int]:
    """A parser for an integer in [low, high]."""

    def parse(value: str) -> int:
        number = count(value)
        if not low <= number <= high:
            raise ValueProblem(f"{number} is out of range {low}-{high}")
        return number

    return parse


def at_least(low: int) -> Callable[[str], int]:
    """A count that is raised to `low` when smaller (as ocserv does for no-compress-limit)."""

    def parse(value: str) -> int:
        return max(low, count(value))

    return parse


def choice(*words: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in words:
            raise ValueProblem(f"expected one of {', '.join(words)}; got {value!r}")
        return value

    return parse


def ip_address(value: str) -> IpAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueProblem(f"{value!r} is not an IP address") from None


def ipv4_address(value: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise ValueProblem(f"{value!r} is not an IPv4 address") from None


def ipv4_network(value: str) -> IPv4Network:
    """`192.168.1.0/24`, `192.168.1.0/255.255.255.0`, or a bare address (`/32` until a netmask).

    Host bits are cleared, as ocserv does.
    """
    try:
        return IPv4Network(value, strict=False)
    except ValueError:
        raise ValueProblem(f"{value!r} is not an IPv4 network") from None


def ipv4_netmask(value: str) -> int:
    """`255.255.255.0` or `24`; returns the prefix length."""
    text_value = value.removeprefix("/")
    if _DIGITS.fullmatch(text_value):
        prefix = int(text_value)
        if prefix > 32:
            raise ValueProblem(f"netmask /{prefix} is longer than 32 bits")
        return prefix
    try:
        return IPv4Network(f"0.0.0.0/{value}").prefixlen
    except ValueError:
        raise ValueProblem(f"{value!r} is not a netmask") from None


def ipv6_network(value: str) -> IPv6Network:
    if "/" not in value:
        raise ValueProblem(f"{value!r} needs a /prefix (e.g. fd00::/48)")
    try:
        return IPv6Network(value, strict=False)
    except ValueError:
        raise ValueProblem(f"{value!r} is not an IPv6 network") from None


def ipv6_interface(value: str) -> IPv6Interface:
    try:
        return IPv6Interface(value)
    except ValueError:
        raise ValueProblem(f"{value!r} is not an IPv6 address[/prefix]") from None


def route(value: str) -> Route:
    """`default`, `10.0.0.0/8`, `10.0.0.0/255.0.0.0` or `fd00::/64`."""
    if value.lower() == "default":
        return "default"
    if "/" not in value:
        raise ValueProblem(f"{value!r} is not a route; expected network/prefix or 'default'")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueProblem(
            f"{value!r} is not a route; expected network/prefix or 'default'"
        ) from None


def domain(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueProblem(f"expected one domain name, got {value!r}")
    return value


def domain_list(value: str) -> str:
    """`default-domain`: one or more domains separated by spaces, kept as written."""
    if not value.split():
        raise ValueProblem("expected one or more domain names")
    return " ".join(value.split())


def group_choice(value: str) -> GroupChoice:
    match = _GROUP_CHOICE.fullmatch(value.strip())
    if match is None:
        raise ValueProblem(f"expected 'group' or 'group[Label]', got {value!r}")
    return GroupChoice(match["name"], match["label"])


def certificate_oid(value: str) -> str:
    """An OID (`2.5.4.3`) or a SAN field (`SAN(rfc822name)`)."""
    if not (_OID.fullmatch(value) or _SAN_OID.fullmatch(value)):
        raise ValueProblem(f"{value!r} is not an OID such as 2.5.4.3 or SAN(rfc822name)")
    return value


def net_priority(value: str) -> NetPriority:
    if value.lower().startswith("0x"):
        try:
            tos = int(value[2:], 16)
        except ValueError:
            raise ValueProblem(f"{value!r} is not a hex TOS value") from None
        if not 0 <= tos <= 255:
            raise ValueProblem(f"TOS {value} does not fit in a byte")
        return NetPriority(tos, is_tos=True)
    return NetPriority(ranged(0, 6)(value))


def http_header(value: str) -> str:
    """`custom-header`: a whole `Name: value` header line, sent verbatim."""
    if not _HEADER.fullmatch(value):
        raise ValueProblem(f"expected 'Header-Name: value', got {value!r}")
    return value


def kkdcp_endpoint(value: str) -> KkdcpEndpoint:
    parts = value.split()
    server = _KKDCP_SERVER.fullmatch(parts[2]) if len(parts) == 3 else None
    if server is None or not parts[0].startswith("/"):
        raise ValueProblem(f"expected '/PATH REALM udp|tcp@HOST:PORT', got {value!r}")
    host = server["host"].removeprefix("[").removesuffix("]")
    protocol: Literal["udp", "tcp"] = "udp" if server["proto"] == "udp" else "tcp"
    return KkdcpEndpoint(parts[0], parts[1], protocol, host, port(server["port"]))


def port_restrictions(value: str) -> str:
    """`restrict-user-to-ports`: `tcp(443), udp(53), icmp()`, optionally wrapped in `!( ... )`."""
    body = value.strip()
    if body.startswith("!"):
        body = body[1:].strip()
        if not (body.startswith("(") and body.endswith(")")):
            raise ValueProblem(f"a negated port list is written !( ... ), got {value!r}")
        body = body[1:-1]
    rules = body.split(",")
    for rule in rules:
        match = _PORT_RULE.fullmatch(rule)
        if match is None:
            raise ValueProblem(f"{rule.strip()!r} is not a port rule such as tcp(443) or icmp()")
        if match[2] and not 0 < int(match[2]) <= 65535:
            raise ValueProblem(f"port {match[2]} is out of range 1-65535")
    return value
