"""decode_object's direct use of json's C scanner accepts and refuses exactly what json.loads
does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcp_server.protocol import ErrorCode, ProtocolError, _json_value, decode_object

# JSON values, and texts around and between them, whitespace of every kind included.
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
padding = st.text(alphabet=" \t\r\n\u00a0\u2028x{}", max_size=4)


def _outcome(parse: Any, text: str) -> tuple[str, str]:
    try:
        return "ok", repr(parse(text))
    except ValueError:
        return "error", ""


@given(value=json_values, before=padding, after=padding)
def test_decodes_a_json_value_with_any_padding_as_json_loads(
    value: object, before: str, after: str
) -> None:
    text = before + json.dumps(value) + after
    assert _outcome(_json_value, text) == _outcome(json.loads, text)


@given(text=st.text(max_size=40))
def test_any_text_is_accepted_or_refused_as_json_loads_does(text: str) -> None:
    assert _outcome(_json_value, text) == _outcome(json.loads, text)


@pytest.mark.parametrize(
    "text", ["", "  ", '{"a":1} x', '{"a":1}{"b":2}', "1 2", "tru", '\u00a0{"a":1}', "]"]
)
def test_refuses_what_is_not_one_json_value(text: str) -> None:
    with pytest.raises(ProtocolError, match="not valid JSON") as refused:
        decode_object(text.encode())
    assert refused.value.code is ErrorCode.BAD_REQUEST
