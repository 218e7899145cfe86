// Wires the pieces together: the connection's events and the user's actions go through
// state.apply, and every new state is rendered. The only module that knows all the others.

import { ChatConnection, NotConnected, Status } from "./connection.js";
import { listRequest, sendRequest } from "./protocol.js";
import { apply, initialState } from "./state.js";
import { createView } from "./view.js";

function gatewayUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws`;
}

const connection = new ChatConnection(gatewayUrl());
let state = initialState();

// One list request at a time: joins that arrive meanwhile ask for one more afterwards, so a burst
// of joins costs two requests, not one each (the core rate-limits every connection).
let listId = null;
let listAgain = false;

function requestList() {
  if (listId !== null) {
    listAgain = true;
    return;
  }
  try {
    listId = connection.request(listRequest());
    listAgain = false;
  } catch (error) {
    if (!(error instanceof NotConnected)) throw error;
  }
}

function dispatch(event) {
  state = apply(state, event);
  view.render(state);
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

const view = createView(document, {
  onJoin(name) {
    dispatch({ type: "local/join", name });
    connection.join(name);
  },
  onSend: send,
  onLeave() {
    connection.leave();
  },
  onSelect(key, title) {
    dispatch({ type: "local/select", key, title });
  },
  onRetry(entry) {
    dispatch({ type: "local/discard", key: entry.key });
    send(entry.to, entry.text);
  },
});

connection.addEventListener("status", (event) => {
  const { status, reason, attempt } = event.detail;
  if (status !== Status.ONLINE) {
    listId = null;
    listAgain = false;
  }
  dispatch({ type: "local/status", status, reason, attempt });
  if (status === Status.ONLINE) requestList();
});

connection.addEventListener("refused", (event) => {
  dispatch({ type: "local/refused", message: event.detail.message });
});

connection.addEventListener("event", (event) => {
  const obj = event.detail;
  const answersList = obj.id !== undefined && obj.id === listId;
  dispatch(obj);
  if (answersList) {
    listId = null;
    if (listAgain) requestList();
  }
  // A join event carries only the name: ask for the address and the kind of client.
  if (obj.type === "joined") requestList();
});

// The browser knows when the network comes back: do not wait for the backoff then.
window.addEventListener("online", () => connection.reconnectNow());

// Leaving the page says goodbye, so that the others see us leave at once.
window.addEventListener("pagehide", () => {
  if (connection.status === Status.ONLINE) connection.leave();
});

view.render(state);
