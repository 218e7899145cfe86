from __future__ import annotations

import threading

import pytest

from tcp_server.config import ServerConfig, config_from_args
from tcp_server.outbox import Outbox
from tcp_server.ratelimit import TokenBucket


def test_outbox_hands_out_everything_queued_as_one_batch() -> None:
    outbox = Outbox(max_bytes=100)
    assert outbox.put(b"ab")
    assert outbox.put(b"cd")
    assert outbox.take() == b"abcd"


def test_outbox_refuses_data_over_its_budget_and_keeps_what_it_had() -> None:
    outbox = Outbox(max_bytes=10)
    assert outbox.put(b"x" * 10)
    assert not outbox.put(b"y")
    assert outbox.take() == b"x" * 10
    assert outbox.put(b"y")


def test_outbox_close_with_discard_keeps_only_the_final_bytes() -> None:
    outbox = Outbox(max_bytes=100)
    outbox.put(b"queued")
    assert outbox.close(b"bye", discard=True)
    assert not outbox.close(b"again")
    assert outbox.take() == b"bye"
    assert outbox.take() is None


def test_outbox_close_flushes_what_was_queued_before_the_final_bytes() -> None:
    outbox = Outbox(max_bytes=100)
    outbox.put(b"queued ")
    outbox.close(b"bye")
    assert outbox.take() == b"queued bye"
    assert outbox.put(b"late")  # accepted and discarded: the connection is closing anyway
    assert outbox.take() is None


def test_outbox_take_wakes_up_on_put_from_another_thread() -> None:
    outbox = Outbox(max_bytes=100)
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(outbox.take()))
    reader.start()
    outbox.put(b"hello")
    reader.join(5)
    assert got == [b"hello"]


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_s=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5
    assert bucket.take()
    assert not bucket.take()


def test_token_bucket_with_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate_per_s=0, burst=1)
    assert all(bucket.take() for _ in range(1000))


def test_config_defaults() -> None:
    assert config_from_args([], {}) == ServerConfig()
    assert ServerConfig().port == 9000


def test_config_flag_beats_environment_which_beats_default() -> None:
    environ = {"CHAT_PORT": "9100", "CHAT_MAX_CLIENTS": "5", "CHAT_GATEWAY_SECRET": "s3"}
    config = config_from_args(["--port", "9200"], environ)
    assert (config.port, config.max_clients, config.gateway_secret) == (9200, 5, "s3")


def test_config_rejects_a_bad_environment_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config_from_args([], {"CHAT_HELLO_TIMEOUT": "soon"})
    assert "CHAT_HELLO_TIMEOUT" in capsys.readouterr().err


def test_config_rejects_negative_limits() -> None:
    with pytest.raises(SystemExit):
        config_from_args(["--max-clients", "-1"], {})


def test_outbox_release_puts_the_first_bytes_before_what_was_held() -> None:
    outbox = Outbox(max_bytes=100)
    outbox.hold()
    assert outbox.put(b"joined ")
    assert outbox.put(b"message ")
    assert outbox.release(first=b"welcome ")
    assert outbox.take() == b"welcome joined message "


def test_outbox_hold_counts_held_bytes_against_the_budget() -> None:
    outbox = Outbox(max_bytes=10)
    outbox.hold()
    assert outbox.put(b"x" * 8)
    assert not outbox.put(b"yyy")
    assert outbox.release(first=b"ab")
    assert outbox.take() == b"ab" + b"x" * 8
