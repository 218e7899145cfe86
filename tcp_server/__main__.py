"""`python -m tcp_server` / `chat-server`: flags and CHAT_* variables -> config -> server."""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from collections.abc import Sequence

from tcp_server.config import config_from_args
from tcp_server.server import ChatServer

log = logging.getLogger("tcp_server")


def main(argv: Sequence[str] | None = None) -> int:
    config = config_from_args(argv, os.environ)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise_open_files_limit()
    try:
        server = ChatServer(config)
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, error)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: server.stop("server shutting down"))
    server.serve_forever()
    return 0


def raise_open_files_limit() -> None:
    """Each client holds a descriptor: take the hard limit the system allows, and say so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open files limit: %d", soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        log.warning("open files limit stays %d (hard limit %d): %s", soft, hard, error)
        return
    log.info("open files limit raised from %d to %d", soft, hard)


if __name__ == "__main__":
    sys.exit(main())
