"""trio-ocserv: an OpenConnect (AnyConnect protocol) VPN server on Trio, a drop-in for ocserv."""

__version__ = "0.1.0"
