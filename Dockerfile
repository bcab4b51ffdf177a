# trio-ocserv in a container.
#
#   docker build -t trio-ocserv .
#   docker run -d --name vpn --cap-add NET_ADMIN --device /dev/net/tun \
#       -p 443:443/tcp -p 443:443/udp -v trio-ocserv-state:/var/lib/trio-ocserv trio-ocserv
#
# Without a config the built-in default is used: the first start creates a self-signed
# certificate and a first user in /var/lib/trio-ocserv (keep it on a volume) and prints the
# password in the log. For your own setup mount a config (and its files):
#   -v /srv/vpn/ocserv.conf:/etc/ocserv/ocserv.conf:ro
# Reload with `docker kill -s HUP vpn`; `docker stop` sends SIGTERM (graceful stop: clients get
# DISCONNECT; raise --stop-timeout above server-drain-ms + 5 s). Admin: `docker exec vpn
# trio-ocserv ctl show users`. NET_ADMIN and /dev/net/tun are needed for the tun devices and
# routes; for clients to reach beyond the container, enable forwarding/NAT on the host.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml setup.py README.rst ./
COPY src ./src
# gcc and libssl-dev only to build the C data paths, then gone (libssl3 stays: it is in the base).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && pip install . && rm -rf /src \
    && apt-get purge -y gcc libc6-dev libssl-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && python -c "import trio_ocserv._dtls_fastpath, trio_ocserv._cstp_fastpath, trio_ocserv._netlink"

WORKDIR /
VOLUME ["/var/lib/trio-ocserv"]
EXPOSE 443/tcp 443/udp

# The exec form: the server is PID 1 and receives SIGTERM/SIGHUP itself.
ENTRYPOINT ["trio-ocserv", "serve", "-f", "--log-stderr"]
# Extra arguments are appended, e.g. `-c /config/ocserv.conf` or `-d 3`.
CMD []
