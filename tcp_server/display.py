"""The one rule for showing text that someone else chose: names, message texts, reasons, headers.

Used wherever such text reaches a terminal or a log: the plain-text dialect (tcp_server/
classic.py, read in `nc`), the terminal client (cli_client/render.py) and the web gateway's
log lines about a browser's headers. The browser puts text into the page with textContent
only, where markup and controls are inert, but a page still obeys the bidirectional
embeddings, overrides and isolates: static/js/labels.js (shownText) escapes those the same
way (and says why it keeps the marks).

What is shown escaped, as `\\xNN` (below U+0100) or `\\uNNNN`, instead of being obeyed:
- the C0 controls, DEL and the C1 controls (U+0000..U+001F, U+007F..U+009F): escape sequences
  that move the cursor, clear the screen, retitle the window; NUL; a lone CR that would let a
  text overwrite the start of its own line. A tab and a line break are the exception when the
  caller says what they become (`tab`, `line_break`);
- the bidirectional-text controls U+202A..U+202E (embeddings, overrides, PDF), U+2066..U+2069
  (isolates) and the marks U+200E, U+200F, U+061C: they make a line read in another order than
  it was written ("Trojan Source"), e.g. a name or a link shown reversed; a chat line from
  another user must read as it was sent;
- U+2028 and U+2029 (line and paragraph separators): some terminals, editors and log viewers
  break lines there, so one event could pass for two;
- lone surrogates (U+D800..U+DFFF): no UTF-8 can carry them, so writing one would fail; the
  core refuses them in texts, but a client must not crash on a line from a broken server.

What is kept: every other character, including zero-width ones (U+200B, U+200C, U+200D,
U+2060, U+FEFF): they neither move the cursor nor reorder a line, and the joiners are part of
emoji sequences and of the spelling of several scripts. Names, the one place where an
invisible character could impersonate someone, are ASCII letters, digits, `_` and `-` only
(docs/protocol.md). A backslash is kept as it is: `\\x1b` typed by a user looks like an escaped
ESC, which is harmless.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

# How each client kind is named to people (`via` of a user entry), and the marks beside a name.
# The browser's copy is static/js/labels.js; a test keeps the two equal.
VIA_LABELS: Final = {"tcp": "terminal", "web": "browser"}
AWAY_MARK: Final = "(away)"
YOU_MARK: Final = "(you)"
# Why a session could not be resumed (session_expired), in a user's words: the server's own
# ("say hello without resume") are for programs.
EXPIRED_SESSION: Final = ("you were away longer than the server keeps a session, or it was "
                          "restarted without its data")

LINE_BREAK_MARK: Final = "\u21b5"  # ↵: a line break shown inside one line

_ESCAPED: Final = re.compile(
    "\r\n|[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def escape_char(char: str) -> str:
    """One character as the escape shown for it: \\x1b, \\u202e."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_text(text: str, *, line_break: str | None = None, tab: str | None = "\t") -> str:
    """`text` safe to print: the characters listed above escaped, everything else as it is.

    `line_break`: what a line break ("\\r\\n", "\\n" or a lone "\\r") becomes, e.g. "\\n" to
    keep it or LINE_BREAK_MARK to stay on one line; None: escaped like the other controls.
    `tab`: what a tab becomes; None: escaped.
    """
    if text.isprintable():  # no control, format, separator or surrogate: the common case
        return text

    def replace(match: re.Match[str]) -> str:
        found = match.group()
        if found in ("\r\n", "\n", "\r"):
            if line_break is not None:
                return line_break
            return "".join(map(escape_char, found))
        if found == "\t" and tab is not None:
            return tab
        return escape_char(found)

    return _ESCAPED.sub(replace, text)


def for_log(value: str | None, max_chars: int = 200) -> str:
    """A peer-supplied value (a header, an address) for a log line: quoted, shown by the rule
    above with every line break escaped, and cut to `max_chars` so that a long one cannot
    flood the log."""
    if value is None:
        return "none"
    cut = value[:max_chars]
    more = f"... ({len(value)} characters)" if len(value) > max_chars else ""
    return f"'{display_text(cut, tab=None)}'{more}"
