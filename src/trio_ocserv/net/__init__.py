"""tun devices, link/address/route configuration, IP lease pools."""
