// The whole state of the page as one immutable value, and one pure function to change it:
// apply(state, event) -> new state. Events are the server's protocol objects plus a few
// "local/..." actions of the user and the connection. No DOM, no sockets, no clock.

import { EVERYONE, nameKey } from "./protocol.js";

export const MAX_MESSAGES_PER_CONVERSATION = 500; // the oldest go first; keeps the page light

export const EVERYONE_KEY = EVERYONE;

function conversation(key, title) {
  return { key, title, messages: [], unread: 0 };
}

/** The state before anyone joins. */
export function initialState() {
  return {
    status: "offline",
    statusReason: "",
    attempt: 0,
    joinName: "", // the name the user asked for
    joinError: "", // the server's message when it refused that name
    me: null, // {name, ip, port} from welcome
    users: [], // [{name, ip, port, via}] as the server listed them; ip null until it does
    conversations: { [EVERYONE_KEY]: conversation(EVERYONE_KEY, "Everyone") },
    active: EVERYONE_KEY,
    pending: {}, // request id -> {conv, key} of a message sent but not acknowledged yet
    nextKey: 1, // local keys of log entries, for the view to reconcile
    notice: "", // the last error that belongs to no message
  };
}

/** The conversation key for messages exchanged with `name`, or with everyone for "*". */
export function conversationKey(name) {
  return name === EVERYONE ? EVERYONE_KEY : nameKey(name);
}

function withConversation(state, key, title) {
  const existing = state.conversations[key];
  if (existing && (title === undefined || existing.title === title)) return state;
  const updated = existing ? { ...existing, title } : conversation(key, title);
  return { ...state, conversations: { ...state.conversations, [key]: updated } };
}

function append(state, convKey, title, entry) {
  let next = withConversation(state, convKey, state.conversations[convKey] ? undefined : title);
  const conv = next.conversations[convKey];
  const key = `m${next.nextKey}`;
  let messages = [...conv.messages, { ...entry, key }];
  if (messages.length > MAX_MESSAGES_PER_CONVERSATION) {
    messages = messages.slice(messages.length - MAX_MESSAGES_PER_CONVERSATION);
  }
  const unread = convKey === next.active || entry.kind === "notice" ? conv.unread : conv.unread + 1;
  next = {
    ...next,
    nextKey: next.nextKey + 1,
    conversations: { ...next.conversations, [convKey]: { ...conv, messages, unread } },
  };
  return [next, key];
}

function updateEntry(state, convKey, entryKey, changes) {
  const conv = state.conversations[convKey];
  if (!conv) return state;
  const messages = conv.messages.map((m) => (m.key === entryKey ? { ...m, ...changes } : m));
  return { ...state, conversations: { ...state.conversations, [convKey]: { ...conv, messages } } };
}

function failAllPending(state, reason) {
  let next = state;
  for (const { conv, key } of Object.values(state.pending)) {
    next = updateEntry(next, conv, key, { state: "failed", error: reason });
  }
  return { ...next, pending: {} };
}

function compareNames(a, b) {
  const [x, y] = [nameKey(a), nameKey(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

function findUser(state, name) {
  const key = nameKey(name);
  return state.users.find((user) => nameKey(user.name) === key);
}

const HANDLERS = {
  // --- the user and the connection ---
  "local/join": (state, { name }) => ({ ...initialState(), joinName: name, status: state.status }),

  "local/refused": (state, { message }) => ({ ...state, joinError: message }),

  "local/status": (state, { status, reason, attempt }) => {
    let next = { ...state, status, statusReason: reason ?? "", attempt: attempt ?? 0 };
    if (status !== "online") {
      next = failAllPending(next, "not confirmed: the connection was lost");
    }
    // A notice belongs to the connection it came on (e.g. the gateway's last words before it
    // closed): the status line takes over when that connection ends.
    next = { ...next, notice: "" };
    // Offline means out of the room (after Leave or a refused name): the join form shows again.
    if (status === "offline") next = { ...next, me: null, users: [] };
    return next;
  },

  "local/select": (state, { key, title }) => {
    const next = withConversation(state, key, state.conversations[key] ? undefined : title);
    const conv = next.conversations[key];
    return {
      ...next,
      active: key,
      conversations: { ...next.conversations, [key]: { ...conv, unread: 0 } },
    };
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

  // --- the server ---
  welcome: (state, { name, ip, port }) => ({ ...state, me: { name, ip, port }, joinError: "" }),

  users: (state, { users }) => {
    // A peer's conversation takes the spelling the server lists (names are case-insensitive).
    let next = { ...state, users };
    for (const user of users) {
      const key = conversationKey(user.name);
      if (next.conversations[key]) next = withConversation(next, key, user.name);
    }
    return next;
  },

  joined: (state, { name }) => {
    let next = state;
    if (!findUser(state, name)) {
      const users = [...state.users, { name, ip: null, port: null, via: null }];
      users.sort((a, b) => compareNames(a.name, b.name));
      next = { ...state, users };
    }
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

  message: (state, { from, to, text, ts }) => {
    const convKey = to === EVERYONE ? EVERYONE_KEY : conversationKey(from);
    const title = to === EVERYONE ? "Everyone" : from;
    const entry = { kind: "in", from, to, text, ts, state: "delivered", error: "" };
    return append(state, convKey, title, entry)[0];
  },

  sent: (state, { id, to, ts }) => {
    const pending = state.pending[id];
    if (!pending) return state;
    const { [id]: _, ...rest } = state.pending;
    const next = updateEntry(state, pending.conv, pending.key, { state: "sent", ts, to });
    return { ...next, pending: rest };
  },

  error: (state, { id, message }) => {
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

/** The users one can write to: everyone online but me. */
export function recipients(state) {
  const mine = state.me ? nameKey(state.me.name) : null;
  return state.users.filter((user) => nameKey(user.name) !== mine);
}

/** Whether the peer of a conversation is online (always true for Everyone). */
export function isPeerOnline(state, key) {
  return key === EVERYONE_KEY || state.users.some((user) => nameKey(user.name) === key);
}
