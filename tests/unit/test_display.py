"""The one display rule (tcp_server/display.py) and its three users: the plain-text dialect,
the terminal client and the gateway's log lines. Hostile strings throughout."""

from __future__ import annotations

import unicodedata

import pytest

from cli_client.render import printable as terminal_printable
from cli_client.render import render_message, render_users
from tcp_server.classic import PlainTextCodec
from tcp_server.classic import printable as plain_text_printable
from tcp_server.display import (
    AWAY_MARK,
    LINE_BREAK_MARK,
    VIA_LABELS,
    YOU_MARK,
    display_text,
    escape_char,
    for_log,
)
from tcp_server.protocol import AWAY, Bye, Error, Message, UserInfo, Users
from web_gateway.views import browser_address

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
C0 = "".join(map(chr, range(0x20)))
C1 = "".join(map(chr, range(0x7F, 0xA0)))
ESCAPED = C0.replace("\t", "").replace("\n", "").replace("\r", "") + C1 + BIDI + "\u2028\u2029"


def is_harmless(shown: str) -> bool:
    """Nothing a terminal would obey or reorder, and all of it encodable as UTF-8."""
    shown.encode("utf-8")
    return not any(unicodedata.category(c) in ("Cc", "Cs") or c in BIDI + "\u2028\u2029"
                   for c in shown if c not in "\t\n")


@pytest.mark.parametrize("char", list(ESCAPED))
def test_every_control_bidi_and_separator_character_is_shown_escaped(char: str) -> None:
    code = ord(char)
    expected = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    assert display_text(f"a{char}b") == f"a{expected}b"
    assert escape_char(char) == expected


@pytest.mark.parametrize("code", [0xD800, 0xDBFF, 0xDC00, 0xDFFF])
def test_a_lone_surrogate_is_shown_escaped_and_never_fails_to_encode(code: int) -> None:
    surrogate = chr(code)
    shown = display_text(f"x{surrogate}y")
    assert shown == f"x\\u{ord(surrogate):04x}y"
    shown.encode("utf-8")


@pytest.mark.parametrize("text", [
    "plain ascii", "😀 émoji and accents", "עברית ועוד", "العربية", "中文",
    "a\u200bzero\u200cwidth\u200djoin\u2060ers\ufeff", "👩\u200d💻 family: 👨\u200d👩\u200d👧",
    "non\u00a0breaking", "soft\u00adhyphen", "back\\slash \\x1b typed",
])
def test_everything_else_is_kept_as_it_is(text: str) -> None:
    assert display_text(text) == text


def test_the_trojan_source_line_reads_in_the_order_it_was_sent() -> None:
    attack = "pay \u202eRSU 0001\u202c to bob\u2066 \u2069"
    assert display_text(attack) == "pay \\u202eRSU 0001\\u202c to bob\\u2066 \\u2069"


def test_ansi_sequences_are_shown_not_obeyed() -> None:
    assert display_text("\x1b[2J\x1b]0;owned\x07\x9b31m") == (
        "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m")


def test_line_breaks_and_tabs_become_what_the_caller_says() -> None:
    text = "a\r\nb\nc\rd\te"
    assert display_text(text) == "a\\x0d\\x0ab\\x0ac\\x0dd\te"
    assert display_text(text, line_break="\n", tab="  ") == "a\nb\nc\nd  e"
    assert display_text(text, line_break=LINE_BREAK_MARK, tab=None) == "a↵b↵c↵d\\x09e"


HOSTILE = [
    "\x1b[31mred\x1b[0m", "over\rwrite", "nul\x00byte", "c1\x85\x9b", "\u202eevil\u202c",
    "\u2066iso\u2069", "two\u2028lines", "surrogate\ud83d", "bell\x07", "del\x7f",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_the_plain_text_dialect_shows_a_hostile_text_on_one_harmless_line(text: str) -> None:
    line = PlainTextCodec().encode(Message("bob", "*", text, 1.0, 1)).decode("utf-8")
    assert line.count("\n") == 1
    assert line.endswith("\n")
    assert is_harmless(line[:-1])
    assert plain_text_printable(text) == display_text(text, line_break=LINE_BREAK_MARK)


def test_the_plain_text_dialect_escapes_bidi_overrides_in_bye_and_error_lines_too() -> None:
    codec = PlainTextCodec()
    assert codec.encode(Bye(reason="\u202ereason")) == b"bye: \\u202ereason\n"
    assert codec.encode(Error("bad_request", "no \u202e")) == b"error: no \\u202e\n"


@pytest.mark.parametrize("text", HOSTILE)
def test_the_terminal_client_shows_a_hostile_text_harmlessly(text: str) -> None:
    shown = render_message(Message("bob", "*", text, 1.0, 1))
    assert is_harmless(shown)
    assert terminal_printable(text, keep_newlines=True) == display_text(
        text, line_break="\n", tab="    ")


def test_the_terminal_client_shows_a_hostile_user_entry_harmlessly() -> None:
    users = (UserInfo("bob\u202e", "1.2.3.4\x1b[2J", 1, "web\x07", "away\u2066"),)
    assert all(is_harmless(line) for line in render_users(users, "me"))


def test_gateway_log_values_are_quoted_escaped_and_cut() -> None:
    assert for_log(None) == "none"
    assert for_log("http://a.example\r\nFAKE LOG LINE") == (
        "'http://a.example\\x0d\\x0aFAKE LOG LINE'")
    assert for_log("\u202eevil\t") == "'\\u202eevil\\x09'"
    long = for_log("x" * 1000)
    assert long == "'" + "x" * 200 + "'... (1000 characters)"


def test_the_gateway_refuses_a_hostile_forwarded_address_with_an_escaped_message() -> None:
    environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "1",
               "HTTP_X_FORWARDED_FOR": "\u202e1.2.3.4\x1b[2J"}
    with pytest.raises(ValueError, match="not an IP address") as refused:
        browser_address(environ, trust_forwarded=True)
    assert is_harmless(str(refused.value))
    assert "\\u202e1.2.3.4\\x1b[2J" in str(refused.value)


def test_labels_come_from_one_place() -> None:
    line = PlainTextCodec().encode(Users((UserInfo("bob", "::1", 1, "web", AWAY),))).decode()
    assert f"{VIA_LABELS['web']}  {AWAY_MARK}" in line
    assert render_users((UserInfo("me", "::1", 1, "tcp"),), "me")[-1].endswith(
        f"{VIA_LABELS['tcp']}  online  {YOU_MARK}")
