"""The rules of the chat: what each request does and what it answers. No sockets here.

A connection hands every parsed request to `Commands.handle` together with its `Session`;
the result says what to reply and whether to close. Deliveries to other users go through the
room (presence and delivery), never through connection code.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tcp_server.protocol import (
    Bye,
    ErrorCode,
    Event,
    Exit,
    Hello,
    ListUsers,
    Ping,
    Pong,
    ProtocolError,
    Proxy,
    Request,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    format_address,
)
from tcp_server.registry import Envelope, Member, NameTakenError, Room

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Session:
    """What the core knows about one connection. Owned by that connection's reader thread."""

    ip: str
    port: int
    deliver: Callable[[Envelope], None]
    via: str = "tcp"
    proxied: bool = False
    member: Member | None = None

    @property
    def name(self) -> str | None:
        return self.member.info.name if self.member else None

    @property
    def peer(self) -> str:
        return format_address(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class Outcome:
    replies: list[Event] = field(default_factory=list)
    close: bool = False


class Commands:
    def __init__(
        self,
        room: Room,
        gateway_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._room = room
        self._gateway_secret = gateway_secret.encode() if gateway_secret else None
        self._clock = clock

    def handle(self, session: Session, request: Request) -> Outcome:
        """Apply one request. ProtocolErrors become error replies here, at one boundary."""
        try:
            return self._dispatch(session, request)
        except ProtocolError as error:
            return Outcome([error.to_event()], close=error.code.closes_connection)

    def leave(self, session: Session) -> None:
        """The connection is ending: unregister its user, if any (the others see left)."""
        if session.member is not None:
            self._room.leave(session.member)
            log.info("%s left as %s", session.peer, session.member.info.name)

    def _dispatch(self, session: Session, request: Request) -> Outcome:
        match request:
            case Ping(id=rid):
                return Outcome([Pong(id=rid)])
            case Exit(id=rid):
                return Outcome([Bye(id=rid)], close=True)
            case Proxy():
                return self._proxy(session, request)
            case Hello():
                return self._hello(session, request)
        if session.member is None:
            raise ProtocolError(
                ErrorCode.NOT_REGISTERED, 'say hello with a name first', request.id
            )
        match request:
            case ListUsers(id=rid):
                return Outcome([Users(users=self._room.users(), id=rid)])
            case Send():
                return self._send(session.member.info.name, request)
        raise AssertionError(f"unhandled request {request!r}")

    def _proxy(self, session: Session, request: Proxy) -> Outcome:
        rid = request.id
        if session.member is not None or session.proxied:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "proxy is only allowed once, before hello", rid
            )
        if self._gateway_secret is None:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "this server accepts no gateway connections", rid
            )
        # surrogatepass: a JSON "\ud800" in the secret is a wrong secret, not a crash.
        if not hmac.compare_digest(
            request.secret.encode("utf-8", "surrogatepass"), self._gateway_secret
        ):
            log.warning("%s sent a proxy request with a wrong secret", session.peer)
            raise ProtocolError(ErrorCode.FORBIDDEN, "wrong gateway secret", rid)
        log.info("%s is a gateway for browser %s:%d", session.peer, request.ip, request.port)
        session.ip, session.port, session.via, session.proxied = (
            request.ip, request.port, "web", True
        )
        return Outcome()

    def _hello(self, session: Session, request: Hello) -> Outcome:
        if session.member is not None:
            raise ProtocolError(
                ErrorCode.ALREADY_REGISTERED,
                f"you are already registered as {session.member.info.name}",
                request.id,
            )
        info = UserInfo(name=request.name, ip=session.ip, port=session.port, via=session.via)
        member = Member(info=info, deliver=session.deliver)
        try:
            self._room.join(member)
        except NameTakenError:
            raise ProtocolError(
                ErrorCode.NAME_TAKEN, f"the name {request.name} is taken", request.id
            ) from None
        session.member = member
        log.info("%s registered as %s (via %s)", session.peer, request.name, session.via)
        return Outcome([Welcome(name=info.name, ip=info.ip, port=info.port, id=request.id)])

    def _send(self, sender: str, request: Send) -> Outcome:
        ts = round(self._clock(), 3)
        to = self._room.send(sender, request.to, request.text, ts)
        if to is None:
            raise ProtocolError(
                ErrorCode.NO_SUCH_USER, f"no user named {request.to[:40]!r} is online", request.id
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s: %r", sender, to, request.text)
        return Outcome([Sent(to=to, ts=ts, id=request.id)])
