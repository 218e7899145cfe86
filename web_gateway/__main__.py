"""`python -m web_gateway` / `chat-web`: flags and CHAT_GATEWAY_SECRET -> config -> gunicorn."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from tcp_server.reclaim import run_again_with
from web_gateway.config import SECRET_ENV, config_from_args
from web_gateway.server import GatewayServer

log = logging.getLogger("web_gateway")


# Python's small-object allocator keeps an arena of 1 MiB as long as one object in it lives:
# after a thousand websockets have come and gone, their scattered survivors kept the gateway at
# twice its fresh size for good (measured: 74 MB against 37 MB fresh). With the C allocator
# for everything, and the worker's malloc_trim (web_gateway.server), it comes back (43 MB).
ALLOCATOR_ENV = "PYTHONMALLOC"


def _with_c_allocator(argv: Sequence[str] | None) -> None:
    """Start again as the same process (exec) with PYTHONMALLOC=malloc, unless the variable
    is set already (by this or by the operator, whose choice stands)."""
    if ALLOCATOR_ENV in os.environ:
        return
    args = list(sys.argv[1:] if argv is None else argv)
    run_again_with({ALLOCATOR_ENV: "malloc"}, [sys.executable, "-m", "web_gateway", *args])


def main(argv: Sequence[str] | None = None) -> int:
    _with_c_allocator(argv)
    config = config_from_args(argv, os.environ)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not config.gateway_secret:
        log.error("%s is not set: start the core and the gateway with the same secret, e.g. "
                  "export %s=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')",
                  SECRET_ENV, SECRET_ENV)
        return 2
    log.info("relaying websockets to the core at %s:%d", config.core_host, config.core_port)
    GatewayServer(config).run()  # gunicorn's arbiter ends the process with sys.exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
