"""`python -m web_gateway` / `chat-web`: flags and CHAT_GATEWAY_SECRET -> config -> gunicorn."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from web_gateway.config import SECRET_ENV, config_from_args
from web_gateway.server import GatewayServer

log = logging.getLogger("web_gateway")


def main(argv: Sequence[str] | None = None) -> int:
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
