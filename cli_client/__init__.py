"""The chatroom's terminal client: `chat-client` (python -m cli_client)."""
