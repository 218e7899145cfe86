"""Who is in the room, as the client knows it: one `users` reply, then the events after it.

The core's `joined` and `back` carry the user's entry, `left` and `away` the name
(docs/protocol.md, "Keeping a list of users from events"), so a list asked for once per
connection stays what `list` would answer, without asking again. Applied in the order the
connection receives lines (its receiver thread), read by the menu: `_lock` guards `_users`.
No I/O here.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from tcp_server.protocol import (
    AWAY,
    ONLINE,
    Away,
    Back,
    Event,
    Joined,
    Left,
    UserInfo,
    Users,
    name_key,
)


class Roster:
    """The users of one connection's room; unknown (None) until a `users` reply comes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, UserInfo] | None = None  # by name_key; guarded by _lock

    def apply(self, event: Event) -> None:
        """Take one event (or reply) into account; anything else is ignored."""
        with self._lock:
            if isinstance(event, Users):
                self._users = {name_key(user.name): user for user in event.users}
                return
            users = self._users
            if users is None:
                return
            match event:
                case Joined(name=name, user=user) | Back(name=name, user=user) if user is None:
                    # A core older than the entry: what it is now must be asked for.
                    known = users.get(name_key(name))
                    if isinstance(event, Joined) or known is None:
                        self._users = None
                    else:
                        users[name_key(name)] = replace(known, status=ONLINE)
                case Joined(name=name, user=UserInfo() as user):
                    users[name_key(name)] = replace(user, status=ONLINE)
                case Back(name=name, user=UserInfo() as user) if name_key(name) in users:
                    users[name_key(name)] = replace(user, status=ONLINE)
                case Left(name=name):
                    users.pop(name_key(name), None)
                case Away(name=name) if name_key(name) in users:
                    users[name_key(name)] = replace(users[name_key(name)], status=AWAY)

    def users(self) -> tuple[UserInfo, ...] | None:
        """Everyone known, sorted as the core sorts `users`; None until a `users` reply."""
        with self._lock:
            if self._users is None:
                return None
            listed = list(self._users.values())
        return tuple(sorted(listed, key=lambda user: (name_key(user.name), user.name)))
