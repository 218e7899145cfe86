// How a client kind is named to people, the marks beside a name, and how text from others is
// shown: the same words and the same rule as the plain-text dialect and the terminal client
// (tcp_server/display.py, their one place on the Python side); tests/e2e/test_frontend_modules.py
// keeps the two equal.

export const VIA_LABELS = Object.freeze({ tcp: "terminal", web: "browser" });
export const AWAY_MARK = "(away)";
export const YOU_MARK = "(you)";
// Why a session could not be resumed (session_expired), in a user's words.
export const EXPIRED_SESSION =
  "you were away longer than the server keeps a session, or it was restarted without its data";

/** The label of a user's `via`; an unknown kind is shown as it is, none as "". */
export function viaLabel(via) {
  if (via === null || via === undefined) return "";
  // Own properties only: a `via` of "constructor" must not find Object's.
  return Object.hasOwn(VIA_LABELS, via) ? VIA_LABELS[via] : String(via);
}

// What a page still obeys in textContent, shown escaped as the terminal shows it: the explicit
// bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), which make a
// message read in another order than it was written ("RTL \u202eevil\u202c" reads "RTL live").
// Narrower than display.py's rule on purpose: each message is isolated in the page (dir=auto),
// so nothing leaks out of it, and the marks (U+200E, U+200F, U+061C) that writers of Hebrew and
// Arabic use only place neutral characters, never reverse letters; line separators break a
// line inside the message's own box only.
const OBEYED_BY_PAGES = /[\u202a-\u202e\u2066-\u2069]/g;

/** Text someone else chose, as it is shown: see OBEYED_BY_PAGES. None is "", as textContent
 * makes of null. */
export function shownText(text) {
  if (text === null || text === undefined) return "";
  return String(text).replace(
    OBEYED_BY_PAGES, (char) => `\\u${char.codePointAt(0).toString(16).padStart(4, "0")}`);
}
