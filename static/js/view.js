// Renders the state into the page and turns the user's actions into calls of `handlers`.
// Everything a user typed reaches the DOM only as textContent of elements made with
// createElement: never innerHTML, so a message like <img src=x onerror=...> stays text; and
// through el(), whose shownText escapes the bidirectional controls a page would obey.

import { EVERYONE_KEY, conversationKey, peerStatus, recipients } from "./state.js";
import { codePointLength, MAX_QUERY_CHARS, MAX_TEXT_CHARS } from "./protocol.js";
import { AWAY_MARK, YOU_MARK, shownText, viaLabel } from "./labels.js";

// Within this many pixels of the top of the log, earlier history loads.
const LOAD_OLDER_PX = 40;

const STATUS_TEXT = {
  connecting: "Connecting…",
  online: "Online",
  reconnecting: "Reconnecting…",
  // Neutral: before the first join (or after a refused name) nothing is wrong with the server.
  offline: "Not connected",
};


function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = shownText(value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function formatTime(ts, withDate = false) {
  // Whole milliseconds: ts * 1000 of a 3-decimal float may fall just below the intended value.
  const date = new Date(Math.round(ts * 1000));
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const text = withDate ? `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}` : time;
  return el("time", { datetime: date.toISOString(), title: date.toLocaleString(), text });
}

function address(user) {
  if (user.ip === null) return "…";
  // An IPv6 address is written in brackets before its port, as in a URL.
  return user.ip.includes(":") ? `[${user.ip}]:${user.port}` : `${user.ip}:${user.port}`;
}

function statusText(state) {
  const base = STATUS_TEXT[state.status] ?? state.status;
  if (state.status === "online" && state.me) return `Online as ${state.me.name}`;
  if (state.status === "reconnecting") {
    const why = state.statusReason ? `Connection lost (${state.statusReason}). ` : "";
    return `${why}Reconnecting… (attempt ${Math.max(state.attempt, 1)})`;
  }
  if (state.status === "offline" && state.statusReason) return `Offline (${state.statusReason})`;
  return base;
}

/**
 * Binds the page's elements. `handlers`: onJoin(name), onSend(to, text), onLeave(),
 * onSelect(key, title), onRetry(entry), onOlder(key), onSearch(q), onSearchClear().
 * Returns {render(state)}.
 */
export function createView(doc, handlers) {
  const $ = (id) => doc.getElementById(id);
  const ui = {
    status: $("status"),
    joinView: $("join-view"),
    joinForm: $("join-form"),
    username: $("username"),
    usernameError: $("username-error"),
    roomView: $("room-view"),
    me: $("me"),
    meName: $("me-name"),
    leave: $("leave"),
    conversations: $("conversations"),
    users: $("users"),
    userCount: $("user-count"),
    chatTitle: $("chat-title"),
    log: $("log"),
    entries: $("entries"),
    older: $("older"),
    logLoading: $("log-loading"),
    searchForm: $("search-form"),
    search: $("search"),
    searchArea: $("search-area"),
    searchStatus: $("search-status"),
    searchResults: $("search-results"),
    composer: $("composer"),
    to: $("to"),
    message: $("message"),
    messageError: $("message-error"),
    notice: $("notice"),
  };

  let previous = null;
  let renderedConv = null; // key of the conversation whose entries the log holds
  const logEntries = new Map(); // entry key -> {node, entry}

  // --- the user's actions ---------------------------------------------------------------
  ui.joinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.username.value.trim();
    if (name === "") {
      ui.usernameError.textContent = "Please type a name.";
      ui.username.setAttribute("aria-invalid", "true");
      ui.username.focus();
      return;
    }
    handlers.onJoin(name);
  });

  function showMessageError(text) {
    ui.messageError.textContent = shownText(text);
    if (text) ui.message.setAttribute("aria-invalid", "true");
    else ui.message.removeAttribute("aria-invalid");
  }

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.message.value;
    if (text.trim() === "") return; // nothing worth sending
    if (codePointLength(text) > MAX_TEXT_CHARS) {
      showMessageError(`A message is at most ${MAX_TEXT_CHARS.toLocaleString("en")} characters.`);
      return;
    }
    showMessageError("");
    handlers.onSend(ui.to.value, text);
    ui.message.value = "";
    ui.message.focus();
  });

  // The error is about the text in the box: it goes as soon as that text could be sent (or is
  // gone), not at the next Send.
  ui.message.addEventListener("input", () => {
    if (ui.messageError.textContent && codePointLength(ui.message.value) <= MAX_TEXT_CHARS) {
      showMessageError("");
    }
  });

  ui.message.addEventListener("keydown", (event) => {
    // Enter sends; Shift+Enter makes a new line; Enter that ends an IME composition does neither.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  ui.to.addEventListener("change", () => {
    const option = ui.to.selectedOptions[0];
    handlers.onSelect(conversationKey(ui.to.value), option ? option.dataset.title : ui.to.value);
  });

  ui.leave.addEventListener("click", () => handlers.onLeave());

  ui.conversations.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-key]");
    if (button) handlers.onSelect(button.dataset.key, button.dataset.title);
  });

  ui.users.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-name]");
    if (button) {
      handlers.onSelect(conversationKey(button.dataset.name), button.dataset.name);
      ui.message.focus();
    }
  });

  // Scrolling up to the top of a conversation loads what came before (and so does the button,
  // for the keyboard).
  function loadOlder() {
    if (previous !== null) handlers.onOlder(previous.active);
  }
  ui.log.addEventListener("scroll", () => {
    const conv = previous && previous.conversations[previous.active];
    if (conv && conv.more && !conv.loading && ui.log.scrollTop < LOAD_OLDER_PX) loadOlder();
  });
  ui.older.addEventListener("click", loadOlder);

  ui.searchForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = ui.search.value.trim();
    if (q === "") handlers.onSearchClear();
    else handlers.onSearch(q.slice(0, MAX_QUERY_CHARS));
  });
  // Clearing the box (its x, or Escape) clears the results.
  ui.search.addEventListener("search", () => {
    if (ui.search.value === "") handlers.onSearchClear();
  });
  ui.searchResults.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-conv]");
    if (button) handlers.onSelect(button.dataset.conv, button.dataset.title);
  });

  ui.log.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-retry]");
    if (!button) return;
    const item = logEntries.get(button.dataset.retry);
    if (item) handlers.onRetry(item.entry);
  });

  // --- rendering -------------------------------------------------------------------------
  function renderStatus(state) {
    ui.status.dataset.status = state.status;
    // Who is online is only known while online: otherwise the list is the last one known.
    if (state.status === "online") delete ui.users.dataset.stale;
    else ui.users.dataset.stale = "";
    ui.status.textContent = shownText(statusText(state));
  }

  function renderViews(state, wasInRoom) {
    // Taking a stored session back (a reload) shows the room at once, not the join form.
    const inRoom = state.me !== null || state.resuming;
    ui.joinView.hidden = inRoom;
    ui.roomView.hidden = !inRoom;
    ui.me.hidden = !inRoom;
    if (state.me !== null) {
      ui.meName.textContent = `${state.me.name} · ${address(state.me)}`;
    } else if (inRoom) {
      ui.meName.textContent = state.joinName;
    }
    if (inRoom && !wasInRoom) ui.message.focus();
    if (!inRoom && wasInRoom) ui.username.focus();
  }

  function renderJoinError(state) {
    ui.usernameError.textContent = shownText(state.joinError);
    if (state.joinError) {
      ui.username.setAttribute("aria-invalid", "true");
      ui.username.focus();
      ui.username.select();
    } else {
      ui.username.removeAttribute("aria-invalid");
    }
  }

  function orderedConversations(state) {
    const peers = Object.values(state.conversations).filter((c) => c.key !== EVERYONE_KEY);
    peers.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return [state.conversations[EVERYONE_KEY], ...peers];
  }

  function renderConversations(state) {
    const hadFocus = ui.conversations.contains(doc.activeElement)
      ? doc.activeElement.dataset.key
      : null;
    const items = orderedConversations(state).map((conv) => {
      const presence = peerStatus(state, conv.key);
      const button = el(
        "button",
        { type: "button", className: "conversation", dataset: { key: conv.key, title: conv.title } },
        el("span", { className: "conversation-title", text: conv.title }),
      );
      if (presence !== "online") {
        button.append(el("span", { className: "offline", text: ` (${presence})` }));
      }
      if (conv.unread > 0) {
        button.append(
          " ",
          el(
            "span",
            { className: "badge" },
            String(conv.unread),
            el("span", { className: "visually-hidden", text: " unread" }),
          ),
        );
      }
      if (conv.key === state.active) button.setAttribute("aria-current", "true");
      return el("li", {}, button);
    });
    ui.conversations.replaceChildren(...items);
    if (hadFocus !== null) {
      const again = ui.conversations.querySelector(`button[data-key="${CSS.escape(hadFocus)}"]`);
      if (again) again.focus();
    }
  }

  function renderUsers(state) {
    const mine = state.me ? conversationKey(state.me.name) : null;
    const hadFocus = ui.users.contains(doc.activeElement) ? doc.activeElement.dataset.name : null;
    const items = state.users.map((user) => {
      const isMe = conversationKey(user.name) === mine;
      const name = isMe
        ? el("span", { className: "user-name", text: `${user.name} ${YOU_MARK}` })
        : el("button", {
            type: "button",
            className: "user-name",
            dataset: { name: user.name },
            title: `Write to ${user.name}`,
            text: user.name,
          });
      const via = viaLabel(user.via);
      const away = user.status === "away";
      return el(
        "li",
        { className: "user", dataset: { via: user.via ?? "", status: user.status ?? "online" } },
        name,
        away ? " " : null,
        away ? el("span", { className: "presence", title: "disconnected; messages wait for them", text: "away" }) : null,
        " ",
        el("span", { className: "user-address", text: address(user) }),
        via ? " " : null,
        via ? el("span", { className: `via via-${user.via}`, text: via }) : null,
      );
    });
    ui.users.replaceChildren(...items);
    ui.userCount.textContent = `(${state.users.length})`;
    if (hadFocus !== null) {
      const again = ui.users.querySelector(`button[data-name="${CSS.escape(hadFocus)}"]`);
      if (again) again.focus();
    }
  }

  function renderTo(state) {
    const options = [el("option", { value: "*", text: "Everyone", dataset: { title: "Everyone" } })];
    for (const user of recipients(state)) {
      const text = user.status === "away" ? `${user.name} ${AWAY_MARK}` : user.name;
      options.push(el("option", { value: user.name, text, dataset: { title: user.name } }));
    }
    const active = state.conversations[state.active];
    let value = "*";
    if (state.active !== EVERYONE_KEY) {
      const listed = recipients(state).find((u) => conversationKey(u.name) === state.active);
      if (listed) {
        value = listed.name;
      } else {
        // Keep showing where this conversation's messages would go, even with the peer away.
        value = active.title;
        options.push(
          el("option", { value, text: `${value} (offline)`, dataset: { title: value } }),
        );
      }
    }
    const signature = options.map((o) => `${o.value}\n${o.textContent}`).join("\n");
    if (signature !== ui.to.dataset.signature) {
      ui.to.replaceChildren(...options);
      ui.to.dataset.signature = signature;
    }
    ui.to.value = value;
  }

  function entryNode(entry) {
    if (entry.kind === "notice") {
      return el("div", { className: "entry notice" }, el("span", { className: "text", text: entry.text }));
    }
    const meta = el(
      "div",
      { className: "meta" },
      el("span", { className: "from", text: entry.from }),
      " ",
      entry.ts === null ? null : formatTime(entry.ts),
    );
    if (entry.state === "pending") {
      meta.append(" ", el("span", { className: "state", text: "sending…" }));
    } else if (entry.state === "failed") {
      meta.append(
        " ",
        el("span", { className: "state failed", text: `not sent: ${entry.error}` }),
        " ",
        el("button", { type: "button", className: "retry", dataset: { retry: entry.key }, text: "Retry" }),
      );
    }
    return el(
      "div",
      { className: `entry ${entry.kind}`, dataset: { state: entry.state } },
      meta,
      // dir=auto: a message takes its direction from its own text (Hebrew or Arabic reads
      // right to left), and bidi controls inside it cannot reorder the page around it.
      el("div", { className: "text", dir: "auto", text: entry.text }),
    );
  }

  function renderLog(state) {
    const conv = state.conversations[state.active];
    ui.chatTitle.textContent = conv.key === EVERYONE_KEY ? "Everyone" : `${conv.title}`;
    const switched = renderedConv !== conv.key;
    const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    const fromBottom = ui.log.scrollHeight - ui.log.scrollTop;
    const firstBefore = ui.entries.firstElementChild;
    if (switched) {
      ui.entries.replaceChildren();
      logEntries.clear();
      renderedConv = conv.key;
    }
    // The entries in the conversation's order (seq order): new ones may come anywhere, e.g.
    // earlier history at the top, or a message whose seq is older than a pending one's.
    const present = new Set();
    let before = null; // the node the next entry must follow
    for (const entry of conv.messages) {
      present.add(entry.key);
      let item = logEntries.get(entry.key);
      if (item === undefined || item.entry !== entry) {
        const node = entryNode(entry);
        if (item !== undefined) item.node.replaceWith(node);
        item = { node, entry };
        logEntries.set(entry.key, item);
      }
      const expected = before === null ? ui.entries.firstChild : before.nextSibling;
      if (expected !== item.node) ui.entries.insertBefore(item.node, expected);
      before = item.node;
    }
    for (const [key, item] of logEntries) {
      if (!present.has(key)) {
        item.node.remove();
        logEntries.delete(key);
      }
    }
    ui.older.hidden = !conv.more || conv.loading;
    ui.logLoading.hidden = !conv.loading;
    if (atBottom || switched || previous === null) {
      ui.log.scrollTop = ui.log.scrollHeight;
    } else if (ui.entries.firstElementChild !== firstBefore) {
      // Earlier messages came in above: what the user was reading stays where it was.
      ui.log.scrollTop = ui.log.scrollHeight - fromBottom;
    }
    if (conv.messages.length === 0 && !conv.loading) {
      ui.log.dataset.empty = conv.key === EVERYONE_KEY ? "No messages yet." : `No messages with ${conv.title} yet.`;
    } else {
      delete ui.log.dataset.empty;
    }
  }

  function resultNode(result) {
    const where = result.conv === EVERYONE_KEY ? "to everyone" : `with ${result.convTitle}`;
    return el(
      "li",
      { className: "result" },
      el(
        "button",
        {
          type: "button",
          className: "result-open",
          dataset: { conv: result.conv, title: result.convTitle },
          title: `Open the conversation ${result.conv === EVERYONE_KEY ? "with everyone" : where}`,
        },
        el(
          "span",
          { className: "meta" },
          el("span", { className: "from", text: result.from }),
          " ",
          el("span", { className: "result-conv", text: where }),
          " ",
          formatTime(result.ts, true),
        ),
        el("span", { className: "text", dir: "auto", text: result.text }),
      ),
    );
  }

  function renderSearch(state) {
    const { search } = state;
    ui.searchArea.hidden = search.state === "idle";
    if (search.state === "idle") {
      ui.searchResults.replaceChildren();
      ui.searchStatus.textContent = "";
      return;
    }
    let status;
    if (search.state === "searching") status = "Searching…";
    else if (search.state === "failed") status = `Search failed: ${search.error}`;
    else if (search.results.length === 0) status = `No messages match “${search.q}”.`;
    else {
      const count = search.results.length;
      status = `${count} ${count === 1 ? "message matches" : "messages match"} “${search.q}”, newest first:`;
    }
    ui.searchStatus.textContent = shownText(status);
    ui.searchResults.replaceChildren(...search.results.map(resultNode));
  }

  function render(state) {
    const was = previous;
    if (!was || was.status !== state.status || was.statusReason !== state.statusReason
        || was.attempt !== state.attempt || was.me !== state.me) {
      renderStatus(state);
    }
    if (!was || was.me !== state.me || was.resuming !== state.resuming) {
      renderViews(state, was !== null && (was.me !== null || was.resuming));
    }
    if (!was || was.joinError !== state.joinError) renderJoinError(state);
    if (!was || was.conversations !== state.conversations || was.active !== state.active
        || was.users !== state.users) {
      renderConversations(state);
    }
    if (!was || was.users !== state.users || was.me !== state.me) renderUsers(state);
    if (!was || was.users !== state.users || was.me !== state.me || was.active !== state.active
        || was.conversations !== state.conversations) {
      renderTo(state);
    }
    if (!was || was.conversations !== state.conversations || was.active !== state.active) {
      renderLog(state);
    }
    if (!was || was.notice !== state.notice) ui.notice.textContent = shownText(state.notice);
    if (!was || was.search !== state.search) renderSearch(state);
    previous = state;
  }

  return { render, focusUsername: () => ui.username.focus() };
}
