from __future__ import annotations

import os
import threading
import time
from dataclasses import replace

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


def test_token_bucket_spends_a_request_s_cost_and_never_more_than_a_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_s=2, burst=10, clock=lambda: now[0])
    assert bucket.take(4)
    assert bucket.take(4)
    assert not bucket.take(4)  # 2 left: refused, and nothing spent
    assert bucket.take(2)
    now[0] = 5.0  # full again
    assert bucket.take(50)  # more than a burst counts as a whole burst: still possible
    assert not bucket.take()
    now[0] = 5.5
    assert bucket.take()
    assert not bucket.take()


def test_token_bucket_with_a_burst_of_zero_lets_nothing_through() -> None:
    bucket = TokenBucket(rate_per_s=5, burst=0)
    assert not bucket.take()
    assert not bucket.take(10)


def test_token_bucket_with_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate_per_s=0, burst=1)
    assert all(bucket.take() for _ in range(1000))


def test_config_defaults() -> None:
    # Only the data directory's default depends on the environment (XDG_DATA_HOME).
    config = config_from_args([], {"XDG_DATA_HOME": "/srv/data"})
    assert config == replace(ServerConfig(), data_dir=os.path.join("/srv/data", "chatroom"))
    assert ServerConfig().port == 9000
    assert ServerConfig().resume_grace == 120.0


def test_config_data_dir_defaults_to_the_users_data_directory() -> None:
    expected = os.path.join(os.path.expanduser("~"), ".local", "share", "chatroom")
    assert config_from_args([], {}).data_dir == expected
    assert config_from_args(["--data-dir", "/tmp/x"], {}).data_dir == "/tmp/x"
    assert config_from_args([], {"CHAT_DATA_DIR": "/tmp/y"}).data_dir == "/tmp/y"


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


def test_wait_for_room_returns_at_once_when_there_is_room() -> None:
    outbox = Outbox(max_bytes=100)
    assert outbox.wait_for_room(50, budget=50, timeout=0)
    outbox.put(b"x" * 20)
    assert outbox.wait_for_room(30, budget=50, timeout=0)
    assert not outbox.wait_for_room(31, budget=50, timeout=0)


def test_wait_for_room_for_more_than_the_budget_returns_once_nothing_is_queued() -> None:
    outbox = Outbox(max_bytes=100)
    assert outbox.wait_for_room(500, budget=50, timeout=0)


def test_wait_for_room_waits_until_take_drains_the_outbox() -> None:
    outbox = Outbox(max_bytes=100)
    outbox.put(b"x" * 80)
    got: list[bool] = []
    waiter = threading.Thread(
        target=lambda: got.append(outbox.wait_for_room(30, budget=100, timeout=10)),
        name="wait-for-room",
    )
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()  # no room yet: it waits
    assert outbox.take() == b"x" * 80
    waiter.join(5)
    assert got == [True]


def test_wait_for_room_is_false_on_timeout() -> None:
    outbox = Outbox(max_bytes=100)
    outbox.put(b"x" * 80)
    start = time.monotonic()
    assert not outbox.wait_for_room(30, budget=100, timeout=0.05)
    assert time.monotonic() - start >= 0.04
    assert outbox.take() == b"x" * 80  # nothing was lost meanwhile


def test_wait_for_room_is_false_after_close() -> None:
    outbox = Outbox(max_bytes=100)
    outbox.close()
    assert not outbox.wait_for_room(1, budget=100, timeout=5)


def test_close_wakes_a_waiter_for_room_with_false() -> None:
    outbox = Outbox(max_bytes=100)
    outbox.put(b"x" * 80)
    got: list[bool] = []
    waiter = threading.Thread(
        target=lambda: got.append(outbox.wait_for_room(30, budget=100, timeout=10)),
        name="wait-for-room",
    )
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()
    outbox.close(b"bye")
    waiter.join(5)
    assert got == [False]
