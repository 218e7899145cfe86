// The websocket to the gateway, and nothing else: no DOM code here (like gamja's lib/client.js).
// It joins under a name, keeps the session across drops (reconnecting with a capped exponential
// backoff and taking the session back with its token and the highest seq seen, so that the
// server replays what was missed; docs/history-and-sessions.md) and reports what happens as
// events:
//   "status"  detail {status, reason, attempt}  whenever the connection status changes
//   "event"   detail <protocol object>           every object the server sends, checked
//   "refused" detail {code, message}             the server refused the name at the first join
//   "session" detail {name, session, lastSeq}    the session to keep (session null: none)
//   "expired" detail {message}                   the session could not be taken back; the
//                                                connection joins again as a new session

import {
  ProtocolViolation,
  encode,
  exitRequest,
  helloRequest,
  parseEvent,
  pingRequest,
} from "./protocol.js";

export const Status = Object.freeze({
  CONNECTING: "connecting",
  ONLINE: "online",
  RECONNECTING: "reconnecting",
  OFFLINE: "offline",
});

export const DEFAULTS = Object.freeze({
  minDelayMs: 500, // first retry; doubles per failed attempt...
  maxDelayMs: 15000, // ...up to this cap, so a long outage costs one try every 15 s at most
  // Dead peers (docs/history-and-sessions.md): a ping every 10 s, and a connection whose pong
  // has not come within 10 s is given up for a new one (which resumes the session).
  pingIntervalMs: 10000,
  pongTimeoutMs: 10000,
  exitTimeoutMs: 3000, // how long Leave waits for the server's bye before closing anyway
  farewellTimeoutMs: 10000, // how long Leave while disconnected tries to end the session
  // After a reconnect, name_taken this many times in a row (about a minute and a half with the
  // delays above) means someone else has the name now, not our own old session.
  maxNameRetries: 8,
});

// Hello errors that mean "this name cannot be had": at the first join the user must pick
// another. After a reconnect name_taken usually means that our own old session has not been
// dropped yet, so the connection retries instead (see _onHelloError).
const NAME_REFUSALS = new Set(["bad_name", "name_taken"]);
const SESSION_EXPIRED = "session_expired";
// The bye of a connection whose session another connection took (a duplicated tab resumed it).
const RESUMED_ELSEWHERE = "resumed elsewhere";

export class NotConnected extends Error {}

export class ChatConnection extends EventTarget {
  /**
   * @param {string} url  the gateway's websocket address (ws: or wss:)
   * @param {object} [options]  DEFAULTS to override, plus WebSocket (a constructor) and random
   *   (a function returning [0, 1)), both replaceable for tests
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._random = options.random ?? Math.random;
    this.status = Status.OFFLINE;
    this.name = null; // the name we (re)join under, or null when the user does not want to be in
    this.session = null; // the session token from the last welcome, to resume with
    this.lastSeq = 0; // the highest seq this session has seen live: where a resume continues
    this._takenOver = false; // the server said another connection resumed our session
    this._networkDown = false; // the browser said it is offline: no retries until it is back
    this._ws = null;
    this._everWelcomed = false; // the name was accepted once since join(): reconnects keep it
    this._attempt = 0; // failed attempts since the last welcome, for the backoff
    this._nameRetries = 0; // name_taken answers in a row since the last welcome
    this._nextId = 1; // ids are unique for the page's life, so a late reply never matches anew
    this._helloId = null;
    this._exitId = null;
    this._pingId = null;
    this._reason = ""; // why the server or gateway is closing the current socket, if it said
    // The most telling reason since the last welcome (what the server or gateway said, or why we
    // gave up on a socket): later attempts that fail without a word keep showing it.
    this._lastReason = "";
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._exitTimer = null;
  }

  /** Join the room under `name`; stays in (reconnecting as needed) until leave() or a refusal. */
  join(name) {
    this._start(name, null, 0);
  }

  /** Take the session `session` of `name` back, continuing after seq `lastSeq` (e.g. after a
   *  reload). If the server no longer has it, "expired" is reported and a plain hello follows. */
  resume(name, session, lastSeq) {
    this._start(name, session, lastSeq);
  }

  _start(name, session, lastSeq) {
    this._stop();
    this.name = name;
    this.session = session;
    this.lastSeq = lastSeq;
    this._takenOver = false;
    this._everWelcomed = false;
    this._attempt = 0;
    this._nameRetries = 0;
    this._lastReason = "";
    this._open();
  }

  /** Send exit, wait (briefly) for the server's bye and go offline; no more reconnects. */
  leave() {
    const ws = this._ws;
    const { name, session, lastSeq } = this;
    this.name = null;
    this._forgetSession();
    this._clearTimer("_retryTimer");
    this._stopPing();
    if (ws && ws.readyState === this._WebSocket.OPEN) {
      this._exitId = this._takeId();
      ws.send(encode(exitRequest(this._exitId)));
      this._exitTimer = setTimeout(() => this._finishLeave(), this.options.exitTimeoutMs);
    } else {
      if (name !== null && session !== null) this._farewell(name, session, lastSeq);
      this._finishLeave();
    }
  }

  /**
   * Leave while disconnected: take the session back on a socket of its own only to end it,
   * so that the name is free at once rather than after the server's grace. Best effort: if
   * the server cannot be reached, the grace ends the session.
   */
  _farewell(name, session, lastSeq) {
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch {
      return;
    }
    const helloId = this._takeId();
    let timer = null;
    const done = () => {
      clearTimeout(timer);
      this._closeQuietly(ws);
    };
    timer = setTimeout(done, this.options.farewellTimeoutMs);
    ws.onopen = () => ws.send(encode(helloRequest(name, helloId, session, lastSeq)));
    ws.onmessage = (message) => {
      let obj;
      try {
        obj = parseEvent(message.data);
      } catch (error) {
        if (!(error instanceof ProtocolViolation)) throw error;
        return;
      }
      if (obj.type === "welcome" && obj.id === helloId) {
        ws.send(encode(exitRequest(this._takeId())));
      } else if (obj.type === "bye" || (obj.type === "error" && obj.id === helloId)) {
        done(); // ended, or nothing left to end (session_expired)
      }
    };
    ws.onclose = done;
    ws.onerror = () => {};
  }

  /**
   * What the browser says about the network (navigator.onLine and its events). Offline: the
   * socket is given up at once (the session waits on the server, which shows us away) and no
   * retry is made until the network is back; online: reconnect now.
   */
  setNetwork(online) {
    const down = !online;
    if (down === this._networkDown) return;
    this._networkDown = down;
    if (this.name === null) return;
    if (down) {
      this._clearTimer("_retryTimer");
      if (this._ws !== null) this._lost("the network is offline");
    } else if (this._ws === null) {
      this._clearTimer("_retryTimer");
      this._open();
    }
  }

  /**
   * Send a request while online, giving it a fresh id (returned). Throws NotConnected when the
   * session is not online: the caller decides what the user sees.
   */
  request(request) {
    if (this.status !== Status.ONLINE || !this._ws) {
      throw new NotConnected("not connected");
    }
    const id = this._takeId();
    this._ws.send(encode({ ...request, id }));
    return id;
  }

  // --- the socket -------------------------------------------------------------------------

  _takeId() {
    const id = `b${this._nextId}`;
    this._nextId += 1;
    return id;
  }

  _open() {
    this._reason = "";
    this._setStatus(
      this._everWelcomed || this._attempt > 0 ? Status.RECONNECTING : Status.CONNECTING,
      this._lastReason,
    );
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (error) {
      this._lost(`cannot connect: ${error.message}`);
      return;
    }
    this._ws = ws;
    ws.onopen = () => this._hello(ws);
    ws.onmessage = (message) => this._onFrame(message.data);
    ws.onclose = (close) => {
      if (ws !== this._ws) return; // a socket we already gave up on
      this._ws = null;
      if (this._exitId !== null) {
        this._finishLeave();
        return;
      }
      if (this._takenOver) {
        // Coming back would take the session from the other tab, which would take it back...
        this.name = null;
        this._forgetSession();
        this._stopPing();
        this._setStatus(Status.OFFLINE, "the session was taken over by another tab");
        return;
      }
      const reason = this._reason || close.reason || this._lastReason || "the connection was closed";
      this._lost(reason);
    };
    // onerror is always followed by onclose, which does the work.
    ws.onerror = () => {};
  }

  _hello(ws) {
    this._helloId = this._takeId();
    ws.send(encode(helloRequest(this.name, this._helloId, this.session, this.lastSeq)));
  }

  _forgetSession() {
    if (this.session === null && this.lastSeq === 0) return;
    this.session = null;
    this.lastSeq = 0;
    this._reportSession();
  }

  _reportSession() {
    const detail = { name: this.name, session: this.session, lastSeq: this.lastSeq };
    this.dispatchEvent(new CustomEvent("session", { detail }));
  }

  _onFrame(frame) {
    let obj;
    try {
      obj = parseEvent(frame);
    } catch (error) {
      if (!(error instanceof ProtocolViolation)) throw error;
      console.warn("ignoring a frame that breaks the protocol:", error.message);
      return;
    }
    if (obj.id !== undefined && obj.id === this._helloId) {
      this._helloId = null;
      if (obj.type === "welcome") {
        this._onWelcome(obj);
      } else if (obj.type === "error") {
        this._onHelloError(obj);
        return;
      }
    } else if (obj.type === "bye") {
      if (obj.id !== undefined && obj.id === this._exitId) {
        this.dispatchEvent(new CustomEvent("event", { detail: obj }));
        this._finishLeave();
        return;
      }
      // The server closes the connection next; say why when it does.
      this._reason = obj.reason || "the server closed the connection";
      if (obj.reason === RESUMED_ELSEWHERE) this._takenOver = true;
    } else if (obj.type === "error" && obj.id === undefined) {
      // e.g. the gateway's "unavailable" before it closes the websocket
      this._reason = obj.message;
    } else if (obj.type === "pong" && obj.id === this._pingId) {
      this._pingId = null;
      this._clearTimer("_pongTimer");
    } else if (obj.type === "message" && Number.isInteger(obj.seq) && obj.seq > this.lastSeq) {
      // Messages come in seq order on a connection: the highest one is where a resume goes on.
      this.lastSeq = obj.seq;
      this._reportSession();
    }
    this.dispatchEvent(new CustomEvent("event", { detail: obj }));
  }

  _onWelcome(welcome) {
    this._everWelcomed = true;
    // The backoff resets on welcome rather than on open: a gateway whose core is down accepts
    // the websocket and closes it at once, and resetting there would retry at full speed.
    this._attempt = 0;
    this._nameRetries = 0;
    this._lastReason = "";
    this.name = welcome.name;
    if (typeof welcome.session === "string") {
      this.session = welcome.session;
      // A new session starts at the store's newest seq: what came before is history.
      if (welcome.resumed !== true) this.lastSeq = welcome.seq ?? 0;
    }
    this._reportSession();
    this._setStatus(Status.ONLINE);
    this._startPing();
  }

  _onHelloError(error) {
    if (error.code === SESSION_EXPIRED && this.session !== null && this._ws) {
      // The session ended (its grace ran out, or the server lost it): the connection stays
      // open, and a plain hello under the same name starts a new session.
      this._forgetSession();
      this.dispatchEvent(new CustomEvent("expired", { detail: { message: error.message } }));
      this._hello(this._ws);
      return;
    }
    const retry = error.code === "name_taken" && this._everWelcomed
      && this._nameRetries < this.options.maxNameRetries;
    if (error.code === "name_taken") this._nameRetries += 1;
    if (NAME_REFUSALS.has(error.code) && !retry) {
      const ws = this._ws;
      this.name = null;
      this._ws = null;
      this._closeQuietly(ws);
      this.dispatchEvent(new CustomEvent("refused", { detail: { code: error.code, message: error.message } }));
      this._setStatus(Status.OFFLINE); // the join form shows the server's message
      return;
    }
    // Our previous session may still hold the name until the core notices it is gone: retry.
    this._lost(error.message);
  }

  /** The socket is gone or useless: retry after the backoff if the user still wants to be in. */
  _lost(reason) {
    const ws = this._ws;
    this._ws = null;
    this._stopPing();
    this._closeQuietly(ws);
    this._lastReason = reason;
    if (this.name === null) {
      this._setStatus(Status.OFFLINE, reason);
      return;
    }
    if (this._networkDown) {
      this._setStatus(Status.RECONNECTING, "the network is offline");
      return; // setNetwork(true) opens the next socket
    }
    const ceiling = Math.min(this.options.maxDelayMs, this.options.minDelayMs * 2 ** this._attempt);
    // "Equal jitter": between half and all of the ceiling, so that many browsers dropped by one
    // restart do not all come back in the same millisecond.
    const delay = Math.round(ceiling / 2 + (this._random() * ceiling) / 2);
    this._attempt += 1;
    this._setStatus(Status.RECONNECTING, reason, delay);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }

  _finishLeave() {
    const ws = this._ws;
    this._ws = null;
    this._exitId = null;
    this._clearTimer("_exitTimer");
    this._closeQuietly(ws);
    this._setStatus(Status.OFFLINE, "you left the chat");
  }

  _stop() {
    const ws = this._ws;
    this._ws = null;
    this._exitId = null;
    this._clearTimer("_retryTimer");
    this._clearTimer("_exitTimer");
    this._stopPing();
    this._closeQuietly(ws);
  }

  _closeQuietly(ws) {
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState === this._WebSocket.CONNECTING || ws.readyState === this._WebSocket.OPEN) {
      ws.close(1000);
    }
  }

  _startPing() {
    this._stopPing();
    this._pingTimer = setInterval(() => {
      if (!this._ws || this._pingId !== null) return;
      this._pingId = this._takeId();
      this._ws.send(encode(pingRequest(this._pingId)));
      this._pongTimer = setTimeout(
        () => this._lost("no answer from the server"),
        this.options.pongTimeoutMs,
      );
    }, this.options.pingIntervalMs);
  }

  _stopPing() {
    if (this._pingTimer !== null) clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._pingId = null;
    this._clearTimer("_pongTimer");
  }

  _clearTimer(field) {
    if (this[field] !== null) clearTimeout(this[field]);
    this[field] = null;
  }

  _setStatus(status, reason = "", retryInMs = null) {
    this.status = status;
    const detail = { status, reason, attempt: this._attempt, retryInMs, name: this.name };
    this.dispatchEvent(new CustomEvent("status", { detail }));
  }
}
