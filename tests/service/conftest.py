"""The service tests' loopback chat-completions server (tests.components.chat)."""

from tests.components.chat import chat_server  # noqa: F401  (the fixture)
