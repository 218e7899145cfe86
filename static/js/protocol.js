// Protocol v1 as the browser sees it (docs/protocol.md): one JSON object per websocket text
// frame, both ways. No DOM and no sockets here: builders for the requests a browser may send and
// a checked parser for what arrives, so that connection.js and state.js never touch raw JSON.

export const EVERYONE = "*";
export const MAX_NAME_CHARS = 32;
export const MAX_TEXT_CHARS = 4000;
const NAME_RE = /^[A-Za-z0-9_-]{1,32}$/;

/** Whether `name` follows the protocol's name rules (the server has the last word). */
export function isValidName(name) {
  return typeof name === "string" && NAME_RE.test(name);
}

/** The key under which a name is unique: names are ASCII and compared case-insensitively. */
export function nameKey(name) {
  return name.toLowerCase();
}

/** Number of Unicode code points, the unit in which the protocol limits a text. */
export function codePointLength(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

/** Join under `name`; with `resume` (a session token) and `after` (the highest seq seen), take
 *  that session back (docs/history-and-sessions.md, "Resume"). */
export function helloRequest(name, id, resume = null, after = 0) {
  return resume === null ? { type: "hello", name, id } : { type: "hello", name, resume, after, id };
}

export function listRequest(id) {
  return { type: "list", id };
}

export function sendRequest(to, text, id) {
  return { type: "send", to, text, id };
}

export function exitRequest(id) {
  return { type: "exit", id };
}

export function pingRequest(id) {
  return { type: "ping", id };
}

export const MAX_HISTORY_LIMIT = 200;
export const MAX_SEARCH_LIMIT = 100;
export const MAX_QUERY_CHARS = 200;

/** The newest `limit` messages of conversation `withName` ("*" or a name) before seq `before`
 *  (null: the newest of all), oldest first. */
export function historyRequest(withName, before = null, limit = 50) {
  const request = { type: "history", with: withName, limit };
  if (before !== null) request.before = before;
  return request;
}

export function searchRequest(q, limit = 20) {
  return { type: "search", q, limit };
}

export function readRequest(withName, seq) {
  return { type: "read", with: withName, seq };
}

export function conversationsRequest() {
  return { type: "conversations" };
}

/** The wire form of a request: one frame. */
export function encode(request) {
  return JSON.stringify(request);
}

export class ProtocolViolation extends Error {}

const isString = (value) => typeof value === "string";
const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
const isPort = (value) => Number.isInteger(value) && value >= 0 && value <= 65535;
const isSeq = (value) => Number.isInteger(value) && value >= 0;
const isOptional = (check) => (value) => value === undefined || check(value);

function requireField(obj, field, check) {
  if (!check(obj[field])) {
    throw new ProtocolViolation(`${obj.type} without a valid "${field}"`);
  }
}

function checkUser(user) {
  if (user === null || typeof user !== "object") {
    throw new ProtocolViolation("users entry is not an object");
  }
  requireField(user, "name", isString);
  requireField(user, "ip", isString);
  requireField(user, "port", isPort);
  requireField(user, "via", isString);
  // "away": the user's connection ended without exit and the session waits for a resume.
  const status = user.status === "away" ? "away" : "online";
  return { name: user.name, ip: user.ip, port: user.port, via: user.via, status };
}

function checkMessage(message) {
  if (message === null || typeof message !== "object") {
    throw new ProtocolViolation("message is not an object");
  }
  requireField(message, "from", isString);
  requireField(message, "to", isString);
  requireField(message, "text", isString);
  requireField(message, "ts", isNumber);
  requireField(message, "seq", isOptional(isSeq));
  return message;
}

function checkMessages(o) {
  if (!Array.isArray(o.messages)) throw new ProtocolViolation(`${o.type} without "messages"`);
  o.messages = o.messages.map(checkMessage);
}

function checkConversation(conversation) {
  if (conversation === null || typeof conversation !== "object") {
    throw new ProtocolViolation("conversations entry is not an object");
  }
  requireField(conversation, "with", isString);
  requireField(conversation, "last", isSeq);
  requireField(conversation, "read", isSeq);
  requireField(conversation, "unread", isSeq);
  return conversation;
}

// joined and back carry the user's entry, as users lists it (none from an older core).
function checkPresence(o) {
  requireField(o, "name", isString);
  if (o.user === undefined || o.user === null) return;
  o.user = checkUser(o.user);
  if (nameKey(o.user.name) !== nameKey(o.name)) {
    throw new ProtocolViolation(`${o.type} with the entry of another user`);
  }
}

// What each known type must carry; unknown fields are ignored (later versions may add some).
const CHECKS = {
  welcome: (o) => {
    requireField(o, "name", isString);
    requireField(o, "ip", isString);
    requireField(o, "port", isPort);
    requireField(o, "session", isOptional(isString));
    requireField(o, "seq", isOptional(isSeq));
  },
  users: (o) => {
    if (!Array.isArray(o.users)) throw new ProtocolViolation('users without a "users" list');
    o.users = o.users.map(checkUser);
  },
  sent: (o) => {
    requireField(o, "to", isString);
    requireField(o, "ts", isNumber);
    requireField(o, "seq", isOptional(isSeq));
  },
  message: checkMessage,
  joined: checkPresence,
  left: (o) => requireField(o, "name", isString),
  away: (o) => requireField(o, "name", isString),
  back: checkPresence,
  history: (o) => {
    requireField(o, "with", isString);
    checkMessages(o);
    o.more = o.more === true;
  },
  results: (o) => {
    requireField(o, "q", isString);
    checkMessages(o);
  },
  read: (o) => {
    requireField(o, "with", isString);
    requireField(o, "seq", isSeq);
  },
  conversations: (o) => {
    if (!Array.isArray(o.conversations)) {
      throw new ProtocolViolation('conversations without a "conversations" list');
    }
    o.conversations = o.conversations.map(checkConversation);
  },
  error: (o) => {
    requireField(o, "code", isString);
    requireField(o, "message", isString);
  },
  bye: () => {},
  pong: () => {},
};

/**
 * One frame from the server as a checked plain object. Throws ProtocolViolation for anything
 * that is not a JSON object with a string "type", or a known type missing a field. Objects of
 * an unknown type are returned as they are: the caller ignores them.
 */
export function parseEvent(frame) {
  if (typeof frame !== "string") throw new ProtocolViolation("binary frame");
  let obj;
  try {
    obj = JSON.parse(frame);
  } catch (error) {
    throw new ProtocolViolation(`not JSON: ${error.message}`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new ProtocolViolation("not a JSON object");
  }
  if (!isString(obj.type)) throw new ProtocolViolation('no string "type"');
  const check = CHECKS[obj.type];
  if (check) check(obj);
  return obj;
}
