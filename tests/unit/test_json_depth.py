"""JSON nesting is bounded before json's C decoder recurses (reader threads have small stacks)."""

from __future__ import annotations

import threading

import pytest

from tcp_server.protocol import MAX_JSON_DEPTH, ErrorCode, ProtocolError, decode_object


def nested(depth: int) -> bytes:
    return b'{"type":"list","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_nesting_at_the_limit_is_decoded() -> None:
    assert decode_object(nested(MAX_JSON_DEPTH))["type"] == "list"


def test_nesting_past_the_limit_is_a_bad_request() -> None:
    with pytest.raises(ProtocolError) as raised:
        decode_object(nested(MAX_JSON_DEPTH + 1))
    assert raised.value.code is ErrorCode.BAD_REQUEST


def test_brackets_inside_strings_do_not_count() -> None:
    text = '{"type":"send","to":"*","text":"' + "[{" * 1_000 + '\\"]"}'
    assert decode_object(text.encode())["text"].startswith("[{[{")


def test_a_line_of_brackets_is_refused_on_a_small_stack() -> None:
    # The line that would crash a 512 KiB thread on 3.13 if it reached json.loads.
    line = b"[" * 32_000 + b"]" * 32_000
    errors: list[ErrorCode] = []

    def decode() -> None:
        try:
            decode_object(line)
        except ProtocolError as error:
            errors.append(error.code)

    previous = threading.stack_size(512 * 1024)
    try:
        thread = threading.Thread(target=decode, name="small-stack")
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join(10)
    assert errors == [ErrorCode.BAD_REQUEST]
