// How a client kind is named to people, the marks beside a name, and how text from others is
// shown: the same words and the same rule as the plain-text dialect and the terminal client
// (tcp_server/display.py, their one place on the Python side); tests/e2e/test_frontend_modules.py
// keeps the two equal.

export const VIA_LABELS = Object.freeze({ tcp: "terminal", web: "browser" });
export const AWAY_MARK = "(away)";
export const YOU_MARK = "(you)";

/** The label of a user's `via`; an unknown kind is shown as it is, none as "". */
export function viaLabel(via) {
  if (via === null || via === undefined) return "";
  // Own properties only: a `via` of "constructor" must not find Object's.
  return Object.hasOwn(VIA_LABELS, via) ? VIA_LABELS[via] : String(via);
}

// The characters of display.py's rule that a page obeys even in textContent: the bidirectional
// controls (embeddings, overrides, isolates, marks) make a message read in another order than
// it was written ("RTL \u202eevil\u202c" shown as "RTL live"), and U+2028/U+2029 break its line.
// Each is shown as its escape, as the terminal shows it; every other character is inert text.
const OBEYED_BY_PAGES = /[\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g;

/** Text someone else chose, as it is shown: see OBEYED_BY_PAGES. None is "", as textContent
 * makes of null. */
export function shownText(text) {
  if (text === null || text === undefined) return "";
  return String(text).replace(
    OBEYED_BY_PAGES, (char) => `\\u${char.codePointAt(0).toString(16).padStart(4, "0")}`);
}
