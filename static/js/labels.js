// How a client kind is named to people, and the marks beside a name: the same words as the
// plain-text dialect and the terminal client use (tcp_server/display.py, their one place on the
// Python side); tests/e2e/test_frontend_modules.py keeps the two equal.

export const VIA_LABELS = Object.freeze({ tcp: "terminal", web: "browser" });
export const AWAY_MARK = "(away)";
export const YOU_MARK = "(you)";

/** The label of a user's `via`; an unknown kind is shown as it is, none as "". */
export function viaLabel(via) {
  if (via === null || via === undefined) return "";
  // Own properties only: a `via` of "constructor" must not find Object's.
  return Object.hasOwn(VIA_LABELS, via) ? VIA_LABELS[via] : String(via);
}
