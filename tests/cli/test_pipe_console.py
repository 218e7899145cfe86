"""console.PipeConsole: answers read line by line, output as a transcript, interruptible."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator

import pytest

from cli_client.console import Interrupted, PipeConsole
from tests.support.core import WAIT_S, wait_until


@pytest.fixture
def pipe() -> Iterator[tuple[PipeConsole, int, io.StringIO]]:
    read_fd, write_fd = os.pipe()
    out = io.StringIO()
    console = PipeConsole(fd=read_fd, out=out)
    try:
        yield console, write_fd, out
    finally:
        console.close()
        os.close(read_fd)
        os.close(write_fd)


def test_answers_are_read_line_by_line_and_echoed_after_their_prompt(
    pipe: tuple[PipeConsole, int, io.StringIO],
) -> None:
    console, write_fd, out = pipe
    os.write(write_fd, "1\nbob\r\nh\u00e9llo\n".encode())
    assert console.ask("choice: ") == "1"
    assert console.ask("to: ") == "bob"
    assert console.ask("text: ") == "h\u00e9llo"
    assert out.getvalue() == "choice: 1\nto: bob\ntext: h\u00e9llo\n"


def test_end_of_input_raises_eof_error_after_a_last_unterminated_line() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"last")
    os.close(write_fd)
    console = PipeConsole(fd=read_fd, out=io.StringIO())
    try:
        assert console.ask("> ") == "last"
        with pytest.raises(EOFError):
            console.ask("> ")
    finally:
        console.close()
        os.close(read_fd)


def test_line_shown_during_a_prompt_goes_above_a_repeated_prompt(
    pipe: tuple[PipeConsole, int, io.StringIO],
) -> None:
    console, write_fd, out = pipe
    answer: list[str] = []
    asker = threading.Thread(target=lambda: answer.append(console.ask("choice: ")),
                             name="test-asker")
    asker.start()
    try:
        # The prompt is out once ask() is blocked reading; then show() interleaves.
        _wait_for_text(out, "choice: ")
        console.show("[12:00:00] bob (to you): hi")
        os.write(write_fd, b"2\n")
    finally:
        asker.join(WAIT_S)
    assert answer == ["2"]
    assert out.getvalue() == "choice: \n[12:00:00] bob (to you): hi\nchoice: 2\n"


def test_interrupt_wakes_a_blocked_ask_and_every_later_one(
    pipe: tuple[PipeConsole, int, io.StringIO],
) -> None:
    console, _, out = pipe
    raised: list[BaseException] = []

    def ask() -> None:
        try:
            console.ask("choice: ")
        except Interrupted as error:
            raised.append(error)

    asker = threading.Thread(target=ask, name="test-asker")
    asker.start()
    try:
        _wait_for_text(out, "choice: ")
        console.interrupt()
    finally:
        asker.join(WAIT_S)
    assert not asker.is_alive()
    assert len(raised) == 1
    with pytest.raises(Interrupted):
        console.ask("again: ")


def test_regular_file_input_is_read_without_polling(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "answers.txt")
    with open(script, "w", encoding="utf-8") as file:
        file.write("1\n3\n")
    fd = os.open(script, os.O_RDONLY)
    console = PipeConsole(fd=fd, out=io.StringIO())
    try:
        assert [console.ask("> "), console.ask("> ")] == ["1", "3"]
        with pytest.raises(EOFError):
            console.ask("> ")
    finally:
        console.close()
        os.close(fd)


def _wait_for_text(out: io.StringIO, text: str) -> None:
    wait_until(lambda: text in out.getvalue(), what=repr(text))


def test_a_default_answer_is_not_added_to_what_a_pipe_answers(
    pipe: tuple[PipeConsole, int, io.StringIO],
) -> None:
    console, write_fd, out = pipe
    os.write(write_fd, b"short\n")
    assert console.ask("text: ", default="a long text") == "short"
    assert out.getvalue() == "text: short\n"
    assert not console.interactive
