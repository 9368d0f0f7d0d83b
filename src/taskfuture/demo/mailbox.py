"""A local SMTP server for the demo: aiosmtpd on loopback, recording every message it accepts."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import socket
import threading
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclasses.dataclass(frozen=True)
class ReceivedMail:
    """One message as the SMTP server received it."""

    sender: str
    recipients: tuple[str, ...]
    #: The raw message bytes after the DATA command.
    content: bytes

    def parse(self) -> EmailMessage:
        """Parse the content into a message with headers and attachments."""
        message = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


class Mailbox:
    """An aiosmtpd handler that stores each accepted message in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        mail = ReceivedMail(str(envelope.mail_from), tuple(envelope.rcpt_tos), bytes(content))
        with self._lock:
            self._messages.append(mail)
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[ReceivedMail]:
        """Messages received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    def find(self, message_id: str) -> ReceivedMail | None:
        """Return the received message whose Message-ID header is ``message_id``, if any."""
        for mail in self.messages:
            if mail.parse()["Message-ID"] == message_id:
                return mail
        return None


class LocalSMTPServer:
    """An SMTP server on 127.0.0.1 and a free port, delivering into a :class:`Mailbox`."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.mailbox = Mailbox()
        self.port = _free_port(self.host)
        # server_hostname is fixed so that aiosmtpd does not look this host up in DNS.
        self._controller = Controller(
            self.mailbox, hostname=self.host, port=self.port, server_hostname="localhost"
        )

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> LocalSMTPServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    # NOTE: another process could take the port between this check and the
    # server's bind; the server then fails to start with a clear OSError.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
