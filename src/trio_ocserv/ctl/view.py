"""What the control socket needs from the server: a read-only view and a set of actions.

The server implements both (`state_view.py` builds them on `ServerState`); tests use fakes. The
view answers with records (records.py) and reads the clock itself: it is the Trio side's object.
Actions are async: disconnecting waits until the tunnel is down. `reload` and `stop` only
schedule the work, so the caller can still answer before the server goes away.
"""

from __future__ import annotations

from typing import Protocol

from trio_ocserv.ctl.records import BanRecord, ServerStatus, SessionRecord, UserRecord

__all__ = ["ServerActions", "ServerView"]


class ServerView(Protocol):
    def wall_time(self) -> float:
        """Now, in seconds since the epoch (durations in the replies are taken against it)."""
        ...

    def status(self) -> ServerStatus: ...

    def users(self) -> list[UserRecord]:
        """Every live tunnel."""
        ...

    def sessions(self) -> list[SessionRecord]:
        """Every session (cookie) the server holds, valid or not yet purged."""
        ...

    def bans(self) -> list[BanRecord]:
        """Addresses banned now."""
        ...

    def ban_points(self) -> list[BanRecord]:
        """Addresses with a score now."""
        ...


class ServerActions(Protocol):
    async def disconnect_user(self, username: str) -> bool:
        """End every tunnel of the user; False if it had none."""
        ...

    async def disconnect_id(self, tunnel_id: int) -> bool: ...

    async def terminate_user(self, username: str) -> bool:
        """End the user's tunnels and invalidate all its sessions (cookies)."""
        ...

    async def terminate_id(self, tunnel_id: int) -> bool:
        """End the tunnel and invalidate its session's cookie."""
        ...

    async def terminate_session(self, session: str) -> bool:
        """Invalidate the session with this public id (ending its tunnel, if any)."""
        ...

    def unban_ip(self, address: str) -> bool:
        """Forget the address's score and ban; False if it had none (or is no address)."""
        ...

    def reload(self) -> None:
        """Schedule a configuration reload (as SIGHUP)."""
        ...

    def stop(self) -> None:
        """Schedule a graceful stop (as SIGTERM)."""
        ...
