// Wires the pieces together: the connection's events and the user's actions go through
// state.apply, and every new state is rendered. The only module that knows all the others, and
// the only one that touches sessionStorage and timers of its own.

import { ChatConnection, NotConnected, Status } from "./connection.js";
import {
  conversationsRequest,
  historyRequest,
  listRequest,
  readRequest,
  searchRequest,
  sendRequest,
} from "./protocol.js";
import {
  apply,
  conversationKey,
  conversationWith,
  initialState,
  oldestSeq,
  readNeeded,
} from "./state.js";
import { loadSession, saveSession } from "./session.js";
import { createView } from "./view.js";

const HISTORY_PAGE = 50; // messages per history request
const EAGER_HISTORY = 20; // conversations whose newest page loads at once after a (re)join
const READ_GAP_MS = 1000; // at most one read request a second: the core rate-limits requests

function gatewayUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws`;
}

const connection = new ChatConnection(gatewayUrl());
let state = initialState();

// The users list is asked for once per connection (after each welcome) and then kept from
// joined/left/away/back, which carry what it needs (docs/protocol.md): a room of N users
// arriving costs each page no request at all. One list request at a time; an event without the
// user's entry (an older core) asks for one more afterwards.
let listId = null;
let listAgain = false;
// Requests whose replies main.js itself follows up on: id -> conversation key for history.
const historyIds = new Map();
let conversationsId = null;
let readId = null;
let readTimer = null;
let lastReadAt = 0;

/** Send a request while online; null (and nothing sent) when not connected. */
function tryRequest(request) {
  try {
    return connection.request(request);
  } catch (error) {
    if (!(error instanceof NotConnected)) throw error;
    return null;
  }
}

function requestList() {
  if (listId !== null) {
    listAgain = true;
    return;
  }
  listId = tryRequest(listRequest());
  listAgain = false;
}

/** The newest page of a conversation not loaded yet, or (older) the page before its oldest. */
function requestHistory(key, older = false) {
  const conv = state.conversations[key];
  if (conv && conv.loading) return;
  if (older && !(conv && conv.loaded && conv.more)) return;
  if (!older && conv && conv.loaded) return;
  const withName = conversationWith(state, key);
  const before = older ? oldestSeq(state, key) : null;
  const id = tryRequest(historyRequest(withName, before, HISTORY_PAGE));
  if (id === null) return;
  historyIds.set(id, key);
  dispatch({ type: "local/history", key, title: conv ? conv.title : withName, loading: true });
}

/** Tell the server what the shown conversation has been read up to (throttled). */
function markRead() {
  if (readId !== null || readTimer !== null || document.visibilityState !== "visible") return;
  const need = readNeeded(state);
  if (need === null) return;
  const wait = lastReadAt + READ_GAP_MS - Date.now();
  if (wait > 0) {
    readTimer = setTimeout(() => {
      readTimer = null;
      markRead();
    }, wait);
    return;
  }
  readId = tryRequest(readRequest(need.with, need.seq));
  if (readId === null) return;
  lastReadAt = Date.now();
  dispatch({ type: "local/read", key: need.key, seq: need.seq });
}

function dispatch(event) {
  const before = state;
  state = apply(state, event);
  view.render(state);
  if (state.active !== before.active) {
    saveSession({ active: { key: state.active, title: conversationWith(state, state.active) } });
  }
  markRead();
}

function send(to, text) {
  try {
    const id = connection.request(sendRequest(to, text));
    dispatch({ type: "local/send", id, to, text });
  } catch (error) {
    if (!(error instanceof NotConnected)) throw error;
    dispatch({ type: "local/send-failed", to, text, reason: "not connected" });
  }
}

function select(key, title) {
  dispatch({ type: "local/select", key, title });
  requestHistory(key);
}

const view = createView(document, {
  onJoin(name) {
    dispatch({ type: "local/join", name });
    connection.join(name);
  },
  onSend: send,
  onLeave() {
    connection.leave();
  },
  onSelect: select,
  onRetry(entry) {
    dispatch({ type: "local/discard", key: entry.key });
    send(entry.to, entry.text);
  },
  onOlder(key) {
    requestHistory(key, true);
  },
  onSearch(q) {
    const id = tryRequest(searchRequest(q));
    dispatch({ type: "local/search", q, id });
  },
  onSearchClear() {
    dispatch({ type: "local/search-clear" });
  },
});

connection.addEventListener("status", (event) => {
  const { status, reason, attempt } = event.detail;
  if (status !== Status.ONLINE) {
    listId = null;
    listAgain = false;
    conversationsId = null;
    readId = null;
    historyIds.clear();
    for (const conv of Object.values(state.conversations)) {
      if (conv.loading) dispatch({ type: "local/history", key: conv.key, loading: false });
    }
  }
  dispatch({ type: "local/status", status, reason, attempt });
  if (status === Status.ONLINE) {
    requestList();
    // Which conversations this session has and their unread counts; their history follows.
    conversationsId = tryRequest(conversationsRequest());
  }
});

connection.addEventListener("refused", (event) => {
  dispatch({ type: "local/refused", message: event.detail.message });
});

connection.addEventListener("session", (event) => {
  const { name, session, lastSeq } = event.detail;
  if (session === null) {
    saveSession(null);
  } else {
    saveSession({ name, session, lastSeq });
  }
});

connection.addEventListener("expired", (event) => {
  dispatch({ type: "local/expired", message: event.detail.message });
});

function onReply(obj) {
  if (obj.id === listId) {
    listId = null;
    if (listAgain) requestList();
  } else if (obj.id === conversationsId) {
    conversationsId = null;
    if (obj.type === "conversations") {
      // The most recently active first: the newest page of each, and of the one shown.
      requestHistory(state.active);
      for (const { with: withName } of obj.conversations.slice(0, EAGER_HISTORY)) {
        requestHistory(conversationKey(withName));
      }
    }
  } else if (obj.id === readId) {
    readId = null;
  } else if (historyIds.has(obj.id)) {
    const key = historyIds.get(obj.id);
    historyIds.delete(obj.id);
    if (obj.type !== "history") dispatch({ type: "local/history", key, loading: false });
  }
}

connection.addEventListener("event", (event) => {
  const obj = event.detail;
  dispatch(obj);
  if (obj.id !== undefined) onReply(obj);
  // Only a core older than the entry in joined and back leaves the list to be asked for.
  if ((obj.type === "joined" || obj.type === "back") && !obj.user) requestList();
});

// The browser knows when the network goes and comes back: give the socket up at once, and do
// not wait for the backoff when it is back.
window.addEventListener("offline", () => connection.setNetwork(false));
window.addEventListener("online", () => connection.setNetwork(true));

// Coming back to the tab reads the conversation shown.
document.addEventListener("visibilitychange", () => markRead());

// A reload or a closed tab sends no exit: the server keeps the session for a while, and the
// reloaded page takes it back (only Leave ends it).
const stored = loadSession();
if (stored !== null) {
  dispatch({ type: "local/resume", name: stored.name, active: stored.active });
  connection.resume(stored.name, stored.session, stored.lastSeq);
} else {
  view.render(state);
}
