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

export function helloRequest(name, id) {
  return { type: "hello", name, id };
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

/** The wire form of a request: one frame. */
export function encode(request) {
  return JSON.stringify(request);
}

export class ProtocolViolation extends Error {}

const isString = (value) => typeof value === "string";
const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
const isPort = (value) => Number.isInteger(value) && value >= 0 && value <= 65535;

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
  return { name: user.name, ip: user.ip, port: user.port, via: user.via };
}

// What each known type must carry; unknown fields are ignored (later versions may add some).
const CHECKS = {
  welcome: (o) => {
    requireField(o, "name", isString);
    requireField(o, "ip", isString);
    requireField(o, "port", isPort);
  },
  users: (o) => {
    if (!Array.isArray(o.users)) throw new ProtocolViolation('users without a "users" list');
    o.users = o.users.map(checkUser);
  },
  sent: (o) => {
    requireField(o, "to", isString);
    requireField(o, "ts", isNumber);
  },
  message: (o) => {
    requireField(o, "from", isString);
    requireField(o, "to", isString);
    requireField(o, "text", isString);
    requireField(o, "ts", isNumber);
  },
  joined: (o) => requireField(o, "name", isString),
  left: (o) => requireField(o, "name", isString),
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
