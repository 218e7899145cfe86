// The whole state of the page as one immutable value, and one pure function to change it:
// apply(state, event) -> new state. Events are the server's protocol objects plus a few
// "local/..." actions of the user and the connection. No DOM, no sockets, no clock.
//
// Messages carry the room-wide `seq` the server gave them (docs/history-and-sessions.md): a
// conversation holds each seq once (a resume may replay a message that history also brought)
// and is kept in seq order. Entries without a seq (notices, messages not yet acknowledged)
// are placed after the newest seq the conversation had when they were made.

import { EXPIRED_SESSION } from "./labels.js";
import { EVERYONE, nameKey } from "./protocol.js";

// Live messages beyond this drop the oldest (history can bring them back); keeps the page light.
export const MAX_MESSAGES_PER_CONVERSATION = 500;

export const EVERYONE_KEY = EVERYONE;

function conversation(key, title) {
  return {
    key,
    title,
    messages: [],
    unread: 0,
    lastSeq: 0, // the newest seq known in this conversation (from messages or the server)
    readSeq: 0, // the server's read marker, as far as we know it
    loaded: false, // its newest history page has arrived
    loading: false, // a history request for it is on its way
    more: false, // older messages than those shown exist on the server
  };
}

function idleSearch() {
  return { q: "", id: null, state: "idle", results: [], error: "" };
}

/** The state before anyone joins. */
export function initialState() {
  return {
    status: "offline",
    statusReason: "",
    attempt: 0,
    joinName: "", // the name the user asked for
    joinError: "", // the server's message when it refused that name
    resuming: false, // taking a stored session back (a reload): the room shows, not the form
    me: null, // {name, ip, port} from welcome
    users: [], // [{name, ip, port, via, status}] as the server listed them; ip null until it does
    conversations: { [EVERYONE_KEY]: conversation(EVERYONE_KEY, "Everyone") },
    active: EVERYONE_KEY,
    pending: {}, // request id -> {conv, key} of a message sent but not acknowledged yet
    nextKey: 1, // local keys of log entries, for the view to reconcile
    notice: "", // the last error that belongs to no message
    search: idleSearch(),
  };
}

/** The conversation key for messages exchanged with `name`, or with everyone for "*". */
export function conversationKey(name) {
  return name === EVERYONE ? EVERYONE_KEY : nameKey(name);
}

/** What the server calls conversation `key` in history and read requests ("*" or a name). */
export function conversationWith(state, key) {
  return key === EVERYONE_KEY ? EVERYONE : state.conversations[key]?.title ?? key;
}

function isMe(state, name) {
  const mine = state.me ? state.me.name : state.joinName;
  return mine !== "" && nameKey(mine) === nameKey(name);
}

/** Key and title of the conversation a message belongs to, as seen by this session. */
export function conversationOf(state, { from, to }) {
  if (to === EVERYONE) return { key: EVERYONE_KEY, title: "Everyone" };
  const peer = isMe(state, from) ? to : from;
  return { key: conversationKey(peer), title: peer };
}

function withConversation(state, key, title) {
  const existing = state.conversations[key];
  if (existing && (title === undefined || existing.title === title)) return state;
  const updated = existing ? { ...existing, title } : conversation(key, title);
  return { ...state, conversations: { ...state.conversations, [key]: updated } };
}

function setConversation(state, key, changes) {
  const conv = state.conversations[key];
  return { ...state, conversations: { ...state.conversations, [key]: { ...conv, ...changes } } };
}

// --- entries in seq order ------------------------------------------------------------------

function sortKey(entry) {
  return entry.seq ?? entry.anchor;
}

function compareEntries(a, b) {
  return sortKey(a) - sortKey(b) || a.order - b.order;
}

function hasSeq(conv, seq) {
  return seq !== null && conv.messages.some((m) => m.seq === seq);
}

function firstSeq(conv) {
  const first = conv.messages.find((m) => m.seq !== null);
  return first ? first.seq : null;
}

function insertSorted(messages, entry) {
  let index = messages.length;
  while (index > 0 && compareEntries(messages[index - 1], entry) > 0) index -= 1;
  return [...messages.slice(0, index), entry, ...messages.slice(index)];
}

/** A new entry for `conv`: its local key, its order and (without a seq) its anchor. */
function makeEntry(state, conv, fields) {
  const seq = fields.seq ?? null;
  return {
    ...fields,
    seq,
    anchor: conv.lastSeq + 0.5,
    order: state.nextKey,
    key: `m${state.nextKey}`,
  };
}

function append(state, convKey, title, fields) {
  const next = withConversation(state, convKey, state.conversations[convKey] ? undefined : title);
  const conv = next.conversations[convKey];
  const entry = makeEntry(next, conv, fields);
  let messages = insertSorted(conv.messages, entry);
  let { more } = conv;
  if (messages.length > MAX_MESSAGES_PER_CONVERSATION) {
    messages = messages.slice(messages.length - MAX_MESSAGES_PER_CONVERSATION);
    more = true; // history has the ones dropped
  }
  // Unread: a message from someone else, in a conversation not shown, newer than what the
  // server already counted (its `last`), so that a late delivery is not counted twice.
  const counts = fields.kind === "in" && convKey !== next.active
    && (entry.seq === null || entry.seq > conv.lastSeq);
  const lastSeq = Math.max(conv.lastSeq, entry.seq ?? 0);
  const unread = counts ? conv.unread + 1 : conv.unread;
  const updated = { ...conv, messages, unread, lastSeq, more };
  return [
    { ...next, nextKey: next.nextKey + 1, conversations: { ...next.conversations, [convKey]: updated } },
    entry.key,
  ];
}

function updateEntry(state, convKey, entryKey, changes) {
  const conv = state.conversations[convKey];
  if (!conv) return state;
  const messages = conv.messages.map((m) => (m.key === entryKey ? { ...m, ...changes } : m));
  return setConversation(state, convKey, { messages });
}

function failAllPending(state, reason) {
  let next = state;
  for (const { conv, key } of Object.values(state.pending)) {
    next = updateEntry(next, conv, key, { state: "failed", error: reason });
  }
  return { ...next, pending: {} };
}

/** A server message object as the fields of a log entry. */
function messageFields(state, { from, to, text, ts, seq }) {
  const mine = isMe(state, from);
  return {
    kind: mine ? "out" : "in",
    from,
    to,
    text,
    ts,
    seq: seq ?? null,
    state: mine ? "sent" : "delivered",
    error: "",
  };
}

function compareNames(a, b) {
  const [x, y] = [nameKey(a), nameKey(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

function findUser(state, name) {
  const key = nameKey(name);
  return state.users.find((user) => nameKey(user.name) === key);
}

function setUserStatus(state, name, status) {
  const key = nameKey(name);
  if (!findUser(state, name)) return state;
  const users = state.users.map((user) => (nameKey(user.name) === key ? { ...user, status } : user));
  return { ...state, users };
}

/** The entry an event carries, online; without one (an older core), what is known of it. */
function entryOf(name, user, known = null) {
  const base = known || { name, ip: null, port: null, via: null };
  const entry = user && typeof user === "object" && nameKey(user.name) === nameKey(name)
    ? { name: user.name, ip: user.ip, port: user.port, via: user.via }
    : base;
  return { ...entry, status: "online" };
}

/** The list with `entry` added, or replacing the user of that name; sorted by name. */
function withUser(state, entry) {
  const key = nameKey(entry.name);
  const users = [...state.users.filter((user) => nameKey(user.name) !== key), entry];
  users.sort((a, b) => compareNames(a.name, b.name));
  return { ...state, users };
}

function titleOf(withName) {
  return withName === EVERYONE ? "Everyone" : withName;
}

const HANDLERS = {
  // --- the user and the connection ---
  "local/join": (state, { name }) => ({ ...initialState(), joinName: name, status: state.status }),

  // A stored session is being taken back (after a reload): the room shows while it connects.
  "local/resume": (state, { name, active }) => {
    let next = { ...initialState(), joinName: name, status: state.status, resuming: true };
    if (active && active !== EVERYONE_KEY) {
      next = { ...withConversation(next, active.key, active.title), active: active.key };
    }
    return next;
  },

  // The session could not be taken back: a new one starts, without the old one's past (the
  // room stays shown while it joins; a refusal of the name brings the join form).
  // The server's words (`message`) are for programs ("say hello without resume"): not shown.
  "local/expired": (state) => ({
    ...initialState(),
    status: state.status,
    statusReason: state.statusReason,
    resuming: true,
    joinName: state.me ? state.me.name : state.joinName,
    notice: `Your earlier session had ended (${EXPIRED_SESSION}); you joined again as a new session.`,
  }),

  "local/refused": (state, { message }) => ({ ...state, joinError: message }),

  "local/status": (state, { status, reason, attempt }) => {
    let next = { ...state, status, statusReason: reason ?? "", attempt: attempt ?? 0 };
    if (status !== "online") {
      next = failAllPending(next, "not confirmed: the connection was lost");
    }
    // A notice belongs to the connection it came on (e.g. the gateway's last words before it
    // closed): the status line takes over when that connection ends.
    if (status !== "online") next = { ...next, notice: "" };
    // Offline means out of the room (after Leave or a refused name): the join form shows again.
    if (status === "offline") next = { ...next, me: null, users: [], resuming: false };
    return next;
  },

  "local/select": (state, { key, title }) => {
    const next = withConversation(state, key, state.conversations[key] ? undefined : title);
    return { ...setConversation(next, key, { unread: 0 }), active: key };
  },

  "local/send": (state, { id, to, text }) => {
    const convKey = conversationKey(to);
    const from = state.me ? state.me.name : state.joinName;
    const [next, key] = append(state, convKey, to, {
      kind: "out",
      from,
      to,
      text,
      ts: null,
      state: "pending",
      error: "",
    });
    return { ...next, pending: { ...next.pending, [id]: { conv: convKey, key } } };
  },

  "local/send-failed": (state, { to, text, reason }) => {
    const from = state.me ? state.me.name : state.joinName;
    const entry = { kind: "out", from, to, text, ts: null, state: "failed", error: reason };
    return append(state, conversationKey(to), to, entry)[0];
  },

  // Retry: the failed entry goes, and the message is sent again as a new one.
  "local/discard": (state, { key }) => {
    const conversations = {};
    for (const [convKey, conv] of Object.entries(state.conversations)) {
      const messages = conv.messages.filter((m) => m.key !== key);
      conversations[convKey] = messages.length === conv.messages.length ? conv : { ...conv, messages };
    }
    return { ...state, conversations };
  },

  // A history request for conversation `key` went out (or failed: loading false).
  "local/history": (state, { key, title, loading }) => {
    const next = withConversation(state, key, state.conversations[key] ? undefined : title);
    return setConversation(next, key, { loading });
  },

  // A read request went out: the marker moves at once, so that it is not asked twice.
  "local/read": (state, { key, seq }) => {
    const conv = state.conversations[key];
    if (!conv) return state;
    return setConversation(state, key, { readSeq: Math.max(conv.readSeq, seq), unread: 0 });
  },

  "local/search": (state, { q, id }) => ({
    ...state,
    search: { q, id, state: id === null ? "failed" : "searching", results: [],
      error: id === null ? "not connected" : "" },
  }),

  "local/search-clear": (state) => ({ ...state, search: idleSearch() }),

  // --- the server ---
  welcome: (state, { name, ip, port, truncated }) => ({
    ...state,
    me: { name, ip, port },
    joinError: "",
    resuming: false,
    // Retention deleted some of what the session missed before it came back.
    notice: truncated === true
      ? "Some messages sent while you were away are no longer kept and cannot be shown."
      : state.notice,
  }),

  users: (state, { users }) => {
    // A peer's conversation takes the spelling the server lists (names are case-insensitive).
    let next = { ...state, users };
    for (const user of users) {
      const key = conversationKey(user.name);
      if (next.conversations[key]) next = withConversation(next, key, user.name);
    }
    return next;
  },

  // The list is kept from events: joined and back carry the user's entry, as list gives it
  // (docs/protocol.md, "Keeping a list of users from events").
  joined: (state, { name, user }) => {
    let next = withUser(state, entryOf(name, user));
    const notice = { kind: "notice", text: `${name} joined`, ts: null };
    next = append(next, EVERYONE_KEY, "Everyone", notice)[0];
    // As with "left": the conversation with them says they are back (and can be written to).
    const key = nameKey(name);
    if (next.conversations[key]) next = append(next, key, name, notice)[0];
    return next;
  },

  left: (state, { name }) => {
    const key = nameKey(name);
    let next = { ...state, users: state.users.filter((user) => nameKey(user.name) !== key) };
    const notice = { kind: "notice", text: `${name} left`, ts: null };
    next = append(next, EVERYONE_KEY, "Everyone", notice)[0];
    if (next.conversations[key]) next = append(next, key, name, notice)[0];
    return next;
  },

  // Away: the connection ended without exit; the session waits for a resume (and messages to
  // the user are kept for it). Back: the session was taken back.
  away: (state, { name }) => setUserStatus(state, name, "away"),

  back: (state, { name, user }) =>
    findUser(state, name) ? withUser(state, entryOf(name, user, findUser(state, name))) : state,

  message: (state, message) => {
    const { key, title } = conversationOf(state, message);
    const conv = state.conversations[key];
    if (conv && hasSeq(conv, message.seq ?? null)) return state; // seen already
    return append(state, key, title, messageFields(state, message))[0];
  },

  sent: (state, { id, to, ts, seq }) => {
    const pending = state.pending[id];
    if (!pending) return state;
    const { [id]: _, ...rest } = state.pending;
    const conv = state.conversations[pending.conv];
    const known = seq !== undefined && hasSeq(conv, seq);
    let messages;
    if (known) {
      // History brought the message before its acknowledgement: keep one copy.
      messages = conv.messages.filter((m) => m.key !== pending.key);
    } else {
      messages = conv.messages.map((m) => (m.key === pending.key
        ? { ...m, state: "sent", ts, to, seq: seq ?? null } : m));
      messages.sort(compareEntries);
    }
    const lastSeq = Math.max(conv.lastSeq, seq ?? 0);
    return { ...setConversation(state, pending.conv, { messages, lastSeq }), pending: rest };
  },

  // A page of history, oldest first; `more`: older ones exist.
  history: (state, { with: withName, messages, more: olderExist }) => {
    const key = conversationKey(withName);
    let next = withConversation(state, key, state.conversations[key] ? undefined : titleOf(withName));
    const conv = next.conversations[key];
    const oldest = firstSeq(conv);
    const fresh = [];
    const seen = new Set(conv.messages.map((m) => m.seq).filter((seq) => seq !== null));
    let order = next.nextKey;
    for (const message of messages) {
      const seq = message.seq ?? null;
      if (seq !== null && seen.has(seq)) continue;
      if (seq !== null) seen.add(seq);
      fresh.push({ ...messageFields(next, message), anchor: 0, order, key: `m${order}` });
      order += 1;
    }
    const merged = [...conv.messages, ...fresh].sort(compareEntries);
    // `more` tells about what is older than this page: it counts only when this page reaches
    // at least as far back as what the conversation held.
    const first = messages.length > 0 ? messages[0].seq ?? null : null;
    const reachesBack = oldest === null || first === null || first <= oldest;
    const more = messages.length === 0 ? false : reachesBack ? olderExist : conv.more;
    const lastSeq = Math.max(conv.lastSeq, ...fresh.map((m) => m.seq ?? 0));
    next = setConversation(next, key, {
      messages: merged, loaded: true, loading: false, more, lastSeq,
    });
    return { ...next, nextKey: order };
  },

  // The server's list of this session's conversations, with read markers and unread counts.
  conversations: (state, { conversations }) => {
    let next = state;
    for (const { with: withName, last, read, unread } of conversations) {
      const key = conversationKey(withName);
      next = withConversation(next, key, next.conversations[key] ? undefined : titleOf(withName));
      const conv = next.conversations[key];
      next = setConversation(next, key, {
        lastSeq: Math.max(conv.lastSeq, last),
        readSeq: Math.max(conv.readSeq, read),
        unread: key === next.active ? 0 : unread,
      });
    }
    return next;
  },

  read: (state, { with: withName, seq }) => {
    const key = conversationKey(withName);
    const conv = state.conversations[key];
    if (!conv) return state;
    return setConversation(state, key, { readSeq: Math.max(conv.readSeq, seq) });
  },

  results: (state, { id, q, messages }) => {
    if (id === undefined || id !== state.search.id) return state; // an answer to an old search
    const results = messages.map((message) => {
      const { key, title } = conversationOf(state, message);
      return {
        key: `r${message.seq ?? ""}-${key}`,
        from: message.from,
        text: message.text,
        ts: message.ts,
        seq: message.seq ?? null,
        conv: key,
        convTitle: title,
      };
    });
    return { ...state, search: { ...state.search, q, state: "done", results } };
  },

  error: (state, { id, message }) => {
    if (id !== undefined && id === state.search.id) {
      return { ...state, search: { ...state.search, state: "failed", error: message } };
    }
    const pending = id === undefined ? undefined : state.pending[id];
    // While not online, an error without a request (the gateway's "unavailable") is already
    // the status line's reason; while online it is worth a notice.
    if (!pending) return state.status === "online" ? { ...state, notice: message } : state;
    const { [id]: _, ...rest } = state.pending;
    const next = updateEntry(state, pending.conv, pending.key, { state: "failed", error: message });
    return { ...next, pending: rest };
  },
};

/** The state after `event`; events of an unknown type leave it unchanged. */
export function apply(state, event) {
  const handler = Object.hasOwn(HANDLERS, event.type) ? HANDLERS[event.type] : undefined;
  return handler ? handler(state, event) : state;
}

/** The users one can write to: everyone listed but me (away users too: the server keeps
 *  their messages for them). */
export function recipients(state) {
  const mine = state.me ? nameKey(state.me.name) : null;
  return state.users.filter((user) => nameKey(user.name) !== mine);
}

/** "online", "away" or "offline" (not listed): the peer of a conversation; Everyone is online. */
export function peerStatus(state, key) {
  if (key === EVERYONE_KEY) return "online";
  const user = state.users.find((u) => nameKey(u.name) === key);
  return user ? user.status ?? "online" : "offline";
}

/** The read request the shown conversation needs, {key, with, seq}, or null. */
export function readNeeded(state) {
  if (state.me === null) return null;
  const conv = state.conversations[state.active];
  if (!conv || conv.lastSeq <= conv.readSeq) return null;
  return { key: conv.key, with: conversationWith(state, conv.key), seq: conv.lastSeq };
}

/** The seq to ask older history before, for conversation `key` (null: ask for the newest). */
export function oldestSeq(state, key) {
  const conv = state.conversations[key];
  return conv ? firstSeq(conv) : null;
}
