"""The words of a search are the search index's words: every character the core counts as
part of a word is a token character for SQLite's FTS5 (unicode61, remove_diacritics 2), so a
word of the query is never a phrase of many words for the index (a hostile search of one
"word" made of 100 would cost seconds of the core's CPU, for the rate cost of one word)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from tcp_server.protocol import query_words, search_words

SURROGATES = range(0xD800, 0xE000)


@pytest.fixture
def index() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5 (text, tokenize='unicode61 remove_diacritics 2')")
    db.execute("CREATE VIRTUAL TABLE tokens USING fts5vocab (t, 'instance')")
    yield db
    db.close()


def _token_count(db: sqlite3.Connection, text: str) -> int:
    db.execute("DELETE FROM t")
    db.execute("INSERT INTO t (rowid, text) VALUES (1, ?)", (text,))
    (count,) = db.execute("SELECT count(*) FROM tokens").fetchone()
    return int(count)


def _index_splits_at(db: sqlite3.Connection, chars: list[str]) -> list[str]:
    """Those of `chars` at which the index splits "a?a" in two (halving where it does)."""
    if _token_count(db, " ".join(f"a{char}a" for char in chars)) == len(chars):
        return []
    if len(chars) == 1:
        return chars
    middle = len(chars) // 2
    return _index_splits_at(db, chars[:middle]) + _index_splits_at(db, chars[middle:])


def test_every_character_of_a_word_is_one_the_index_keeps_in_its_word(
    index: sqlite3.Connection,
) -> None:
    every = " ".join(chr(code) for code in range(0x110000) if code not in SURROGATES)
    word_characters = sorted(set(search_words(every)))
    assert len(word_characters) > 100_000  # letters and digits of every script
    assert _index_splits_at(index, word_characters) == []


@pytest.mark.parametrize("separator", ["_", "\u19b0", "\u19c9", "\u1cf2", "\u1cf3", "-", "'"])
def test_a_long_run_of_one_word_and_a_separator_is_one_word_to_look_up(separator: str) -> None:
    assert query_words(f"a{separator}" * 100) == ["a"]
