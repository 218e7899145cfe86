"""What the Redis store and the Redis room share: the key layout, the Lua scripts, the message
codec, the client settings and the mapping of Redis failures to `StoreError`.

Every node of one room talks to one Redis server (not Redis Cluster: the scripts build keys
from the prefix). Keys, with the default prefix `chat:`:

    chat:seq                  the room-wide message seq (INCR)
    chat:all                  every stored message, ZSET score=seq member=message JSON
    chat:everyone             the messages to "*", same form
    chat:in:{S}               direct messages to session S
    chat:dmin:{S}:{peer}      direct messages session S received from `peer` (a name_key)
    chat:dmout:{S}:{peer}     direct messages session S sent to `peer`
    chat:mine:{S}             ZSET of the seqs of S's messages to everyone (unread counts)
    chat:peers:{S}            ZSET member=peer name_key score=last seq: S's conversations
    chat:read:{S}             HASH conversation -> read marker
    chat:sid                  the last session id (INCR)
    chat:session:{S}          HASH: name, ip, port, via, start_seq, delivered_seq, away_since,
                              token_key (the key below: the token's hash, never the token)
    chat:token:{sha256 hex}   -> S, while the session is open
    chat:sent:{id}            -> seq of a send (60 s): a send retried after a lost answer is
                              stored once
    chat:pruned               every message up to this seq was deleted by retention
    chat:users                HASH name_key -> member JSON (name, ip, port, via, status,
                              session, conn, node, since)
    chat:addrs                HASH address group (tcp_server/addresses.py; a record written
                              before groups were kept: its ip) -> sessions registered from it
    chat:nodes                ZSET node id -> its last heartbeat (Redis's clock, ms)
    chat:events:{db}          the pub/sub channel: "m" + message JSON, "p" + presence JSON

A message is the JSON array [seq, ts, sender, sender_session, to, recipient_session, text].
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any, Final

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tcp_server.store import NewMessage, StoredMessage, StoreError

PREFIX: Final = "chat:"
SOCKET_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 2.0
SENT_ID_TTL_S: Final = 60  # far beyond the writer's 5 s of retries


class RedisUnavailable(StoreError):
    """Redis could not be reached or failed: the request had no effect (see send's note)."""


@contextlib.contextmanager
def unavailable_on_failure(what: str) -> Iterator[None]:
    """Turn Redis's failures into RedisUnavailable, which the core answers with `unavailable`."""
    try:
        yield
    except redis.RedisError as error:
        raise RedisUnavailable(f"redis: {what} failed: {error}") from error


def connect(url: str, retries: int = 2) -> Any:
    """A thread-safe client (a connection pool). A few quick retries take a pooled connection
    that a Redis restart broke; `retries=0` for requests that must not run twice.

    Typed Any: redis-py types every reply as bytes | str | list whatever decode_responses
    says; with decode_responses=True each reply is used as the str, int or list it is."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries),
        health_check_interval=30,
    )


def database(client: Any) -> int:
    """The database number a client uses (redis://HOST:PORT/DB)."""
    return int(client.connection_pool.connection_kwargs.get("db", 0))


class Keys:
    """Key names under one prefix (tests use one prefix per test on a shared server)."""

    def __init__(self, prefix: str = PREFIX, db: int = 0) -> None:
        p = self.prefix = prefix
        self.seq = p + "seq"
        self.all = p + "all"
        self.everyone = p + "everyone"
        self.sid = p + "sid"
        self.pruned = p + "pruned"
        self.users = p + "users"
        self.addrs = p + "addrs"
        self.nodes = p + "nodes"
        # Channels are not per database: rooms in two databases of one Redis must not hear
        # each other.
        self.events = f"{p}events:{db}"

    def inbox(self, session: int) -> str:
        return f"{self.prefix}in:{session}"

    def dm_in(self, session: int, peer_key: str) -> str:
        return f"{self.prefix}dmin:{session}:{peer_key}"

    def dm_out(self, session: int, peer_key: str) -> str:
        return f"{self.prefix}dmout:{session}:{peer_key}"

    def mine(self, session: int) -> str:
        return f"{self.prefix}mine:{session}"

    def peers(self, session: int) -> str:
        return f"{self.prefix}peers:{session}"

    def read(self, session: int) -> str:
        return f"{self.prefix}read:{session}"

    def session(self, session: int) -> str:
        return f"{self.prefix}session:{session}"

    def token(self, token_hex: str) -> str:
        return f"{self.prefix}token:{token_hex}"

    def sent(self, send_id: str) -> str:
        return f"{self.prefix}sent:{send_id}"


def message_body(message: NewMessage) -> str:
    """The message JSON without its seq (the script puts `[seq,` in front). ASCII only, so
    that any text (even a lone surrogate from a JSON escape) is stored as it came."""
    return json.dumps([message.ts, message.sender, message.sender_session, message.to,
                       message.recipient_session, message.text], separators=(",", ":"))[1:]


def decode_message(raw: str) -> StoredMessage:
    seq, ts, sender, sender_session, to, recipient_session, text = json.loads(raw)
    return StoredMessage(int(seq), float(ts), sender, int(sender_session), to,
                         None if recipient_session is None else int(recipient_session), text)


def encode_record(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


# --- Lua scripts (Redis runs each atomically, one at a time) ---------------------------------

# KEYS: seq, all, sent-id, then for "*": everyone, mine(S); for a direct message: in(R),
# dmout(S, R), dmin(R, S), peers(S), peers(R)
# ARGV: body (message JSON from its second element), channel, sent-id ttl [, rkey, skey]
# INCR + store + PUBLISH in one script: publications leave Redis in seq order, so every
# subscriber receives messages in seq order. A send id seen before answers its first seq.
SEND: Final = """
local old = redis.call('GET', KEYS[3])
if old then return tonumber(old) end
local seq = redis.call('INCR', KEYS[1])
local msg = '[' .. seq .. ',' .. ARGV[1]
redis.call('ZADD', KEYS[2], seq, msg)
redis.call('ZADD', KEYS[4], seq, msg)
if #KEYS == 5 then
  redis.call('ZADD', KEYS[5], seq, seq)
else
  redis.call('ZADD', KEYS[5], seq, msg)
  redis.call('ZADD', KEYS[6], seq, msg)
  redis.call('ZADD', KEYS[7], seq, ARGV[4])
  redis.call('ZADD', KEYS[8], seq, ARGV[5])
end
redis.call('SET', KEYS[3], seq, 'EX', ARGV[3])
redis.call('PUBLISH', ARGV[2], 'm' .. msg)
return seq
"""

# KEYS: sid, seq, token.  ARGV: session key prefix, name, ip, port, via
OPEN_SESSION: Final = """
local id = redis.call('INCR', KEYS[1])
local start = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('HSET', ARGV[1] .. id, 'name', ARGV[2], 'ip', ARGV[3], 'port', ARGV[4],
           'via', ARGV[5], 'start_seq', start, 'delivered_seq', start, 'away_since', '',
           'token_key', KEYS[3])
redis.call('SET', KEYS[3], id)
return {id, start}
"""

# KEYS: session.  ARGV: since, delivered_seq
SET_AWAY: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local d = tonumber(redis.call('HGET', KEYS[1], 'delivered_seq') or '0')
if tonumber(ARGV[2]) > d then d = tonumber(ARGV[2]) end
redis.call('HSET', KEYS[1], 'away_since', ARGV[1], 'delivered_seq', d)
return 1
"""

# KEYS: read markers, then the conversation's message sets (one for "*", two for a peer).
# ARGV: conversation, seq, floor
# The marker moves to the conversation's newest message up to seq (never below `floor`, the
# session's start for "*"), and never back.
MARK_READ: Final = """
local upto = 0
for i = 2, #KEYS do
  local found = redis.call('ZREVRANGEBYSCORE', KEYS[i], ARGV[2], '-inf', 'WITHSCORES',
                           'LIMIT', 0, 1)
  if #found > 0 and tonumber(found[2]) > upto then upto = tonumber(found[2]) end
end
if tonumber(ARGV[3]) > upto then upto = tonumber(ARGV[3]) end
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if upto > now then
  redis.call('HSET', KEYS[1], ARGV[1], upto)
  now = upto
end
return now
"""

# KEYS: pruned.  ARGV: seq
RAISE_PRUNED: Final = """
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > now then redis.call('SET', KEYS[1], ARGV[1]) return tonumber(ARGV[1]) end
return now
"""

# A record counts against its address group (tcp_server/addresses.py); a record written
# before groups were kept counts against its ip.
_DROP_ADDRESS: Final = """
local function drop_address(addrs, r)
  local group = r.group or r.ip
  if redis.call('HINCRBY', addrs, group, -1) <= 0 then redis.call('HDEL', addrs, group) end
end
"""

# KEYS: users, addrs.  ARGV: key, record, address group, max per address, channel, joined event
JOIN: Final = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'taken' end
local max = tonumber(ARGV[4])
if max > 0 and tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0') >= max then
  return 'full'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 'ok'
"""

# KEYS: users, addrs.  ARGV: key, session, record, new address group, channel, back event,
# kick event, max per address
# Returns the record it replaced (false: the session no longer holds the name; 'full': it
# moves to another address group that has max per address sessions already; a record
# written before groups were kept is never refused: its group is not known here).
RESUME: Final = _DROP_ADDRESS + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
local r = cjson.decode(cur)
if tostring(r.session) ~= ARGV[2] then return false end
local max = tonumber(ARGV[8])
if max > 0 and r.group and r.group ~= ARGV[4]
   and tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or '0') >= max then
  return 'full'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
drop_address(KEYS[2], r)
redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
if r.status ~= 'away' then
  -- held by another connection: that one is closed, and others still see back (new address)
  redis.call('PUBLISH', ARGV[5], ARGV[7])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return cur
"""

# KEYS: users.  ARGV: key, session, conn, away record, channel, away event
# The away record keeps the key its session is counted under in addrs (a record from before
# groups were kept is counted under its ip).
AWAY: Final = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local r = cjson.decode(cur)
if tostring(r.session) ~= ARGV[2] or r.conn ~= ARGV[3] or r.status ~= 'online' then return 0 end
local away = cjson.decode(ARGV[4])
away.group = r.group or r.ip
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(away))
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# KEYS: users, addrs.  The count per address group made again from the records: a count left
# wrong (a node of an older version ended a record counted under its group) is repaired at a
# node's start. Returns the number of records.
RECOUNT_ADDRESSES: Final = """
local counts = {}
local all = redis.call('HVALS', KEYS[1])
for _, raw in ipairs(all) do
  local r = cjson.decode(raw)
  local group = r.group or r.ip
  counts[group] = (counts[group] or 0) + 1
end
redis.call('DEL', KEYS[2])
for group, n in pairs(counts) do redis.call('HSET', KEYS[2], group, n) end
return #all
"""

# KEYS: users, addrs.  ARGV: key, session, conn, channel, left event, mode
# mode "leave": the session's own connection ends it (or any, while it is away);
# mode "expire": only the away state `conn` (a resume since gave it another conn).
END: Final = _DROP_ADDRESS + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local r = cjson.decode(cur)
if tostring(r.session) ~= ARGV[2] then return 0 end
if ARGV[6] == 'expire' then
  if r.conn ~= ARGV[3] or r.status ~= 'away' then return 0 end
elseif r.conn ~= ARGV[3] and r.status ~= 'away' then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
drop_address(KEYS[2], r)
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""

# KEYS: nodes, users.  ARGV: me, node timeout ms, channel, now (wall clock), also (a node to
# adopt whatever its heartbeat says: this node's own previous run, or '')
# The heartbeat (Redis's clock, so the nodes' clocks do not matter) and the sweep: the members
# of every node silent for the timeout are marked away (if online) and adopted by this node,
# which then runs their grace. Atomic: when several nodes notice a dead node at once, the
# first takes its members and the others find none. Returns {'1' or '0': whether this node was
# still listed (a '0' after its first beat: another node took it for dead), adopted...}
BEAT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
local dead = {}
local any = false
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))) do
  if node ~= ARGV[1] then dead[node] = true any = true end
end
if ARGV[5] ~= '' then dead[ARGV[5]] = true any = true end
redis.call('ZADD', KEYS[1], now, ARGV[1])
local adopted = {mine and '1' or '0'}
if not any then return adopted end
for node, _ in pairs(dead) do
  if node ~= ARGV[1] then redis.call('ZREM', KEYS[1], node) end
end
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local r = cjson.decode(all[i + 1])
  if dead[r.node] then
    if r.status == 'online' then
      r.status = 'away'
      r.since = tonumber(ARGV[4])
      redis.call('PUBLISH', ARGV[3], 'p' .. cjson.encode({k = 'away', name = r.name,
        s = r.session}))
    end
    r.node = ARGV[1]
    local enc = cjson.encode(r)
    redis.call('HSET', KEYS[2], all[i], enc)
    table.insert(adopted, enc)
  end
end
return adopted
"""

# KEYS: nodes.  ARGV: me.  A node stopping cleanly: its heartbeat is made old at once, so the
# next sweep of another node adopts its (now away) members without waiting for the timeout.
RETIRE: Final = """
redis.call('ZADD', KEYS[1], 0, ARGV[1])
return 1
"""
