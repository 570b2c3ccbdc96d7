"""``email.send``, ``email.reply`` (SMTP submission) and ``email.draft`` (IMAP APPEND).

Each action runs only after the policy admitted it, with the arguments it admitted and
the action's idempotency key. The key becomes the Message-ID (``<KEY@domain>``, the
domain of the account), so a send retried after a crash carries the same Message-ID
and recipients' systems can recognise the duplicate; a draft is not appended again
when the drafts mailbox already holds that Message-ID.

The message is built here, never taken from the planner: one recipient (``to``, a
single address that is also the only envelope recipient), the account as From, the
subject and a plain-text body. A header value with a line break is refused, not
folded: it would be a header injection.

Submission uses implicit TLS (``tls``, port 465) or a mandatory STARTTLS
(``starttls``, port 587) through aiosmtplib, on a socket to the address
:class:`~threezone.executor.egress.Egress` pinned (connector ``smtp``), with the
certificate verified against the configured host name. ``insecure-plaintext`` is
refused for any non-loopback address. Refusals (5xx: bad credentials, relay denied,
recipient unknown) raise ``ConnectorError(retryable=False)``; 4xx replies, timeouts
and dropped connections raise ``ConnectorError(retryable=True)``.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import re
import socket
import ssl
from collections.abc import Mapping
from email.message import EmailMessage

import aiosmtplib

from threezone.config.schema import EmailChannelConfig
from threezone.connectors.imap import (
    in_thread,
    open_session,
    refuse_plaintext_off_loopback,
    scrub,
    tls_context,
)
from threezone.errors import ConnectorError
from threezone.executor.actions import CATALOG, ActionSpec, Runner
from threezone.executor.egress import Egress, Pinned
from threezone.executor.secrets import SecretStore
from threezone.protocol.messages import ArgValue

CONNECTOR = "smtp"
DEFAULT_DOMAIN = "threezone.local"
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_KEY = re.compile(r"^[0-9A-Za-z_-]{8,128}$")
_MSG_ID = re.compile(r"^<?([!-;=?-~]{1,250}@[!-;=?-~]{1,250})>?$")  # printable, no < > or space


def email_actions_smtp(
    config: EmailChannelConfig, secrets: SecretStore, egress: Egress, *, timeout: float = 60.0
) -> list[ActionSpec]:
    """``email.send`` and ``email.reply`` over SMTP, ``email.draft`` by IMAP APPEND."""
    mailer = _Mailer(config, secrets, egress, timeout)
    runners: dict[str, Runner] = {
        "email.send": mailer.send,
        "email.reply": mailer.send,
        "email.draft": mailer.draft,
    }
    return [
        ActionSpec(name, CATALOG[name][0], CATALOG[name][1], run) for name, run in runners.items()
    ]


def message_id_for(key: str, account: str) -> str:
    """``<KEY@domain-of-account>``: the same key always yields the same Message-ID."""
    if not _KEY.match(key):
        raise ConnectorError(CONNECTOR, "the idempotency key is not a plain token", retryable=False)
    return f"<{key}@{account_domain(account)}>"


def account_domain(account: str) -> str:
    """The domain of the account's address (Message-IDs, EHLO), or ``threezone.local``."""
    domain = account.rpartition("@")[2] if "@" in account else ""
    return domain or DEFAULT_DOMAIN


def build_message(args: Mapping[str, ArgValue], key: str, account: str) -> tuple[EmailMessage, str]:
    """The message to send and its one recipient; refuses anything that could inject."""
    values = {name: str(value) for name, value in args.items() if value is not None}
    for name in ("to", "subject", "in_reply_to"):
        if any(c in values.get(name, "") for c in "\r\n\x00"):
            raise ConnectorError(CONNECTOR, f"{name!r} contains a line break", retryable=False)
    recipient = _single_address(values.get("to", ""))
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = account
    message["To"] = recipient
    message["Subject"] = values.get("subject", "")
    message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id_for(key, account)
    # RFC 3834: say a machine sent this, so auto-responders (and other agents) do not
    # answer it and start a loop.
    message["Auto-Submitted"] = "auto-replied" if values.get("in_reply_to") else "auto-generated"
    if values.get("in_reply_to"):
        parent = _message_id(values["in_reply_to"])
        message["In-Reply-To"] = parent
        message["References"] = parent
    message.set_content(values.get("body", ""))
    return message, recipient


def _single_address(untrusted_to: str) -> str:
    """The one plain address in ``to`` (a display name is dropped), or a refusal."""
    found = email.utils.getaddresses([untrusted_to])
    address = found[0][1] if len(found) == 1 else ""
    if not _ADDRESS.match(address):
        raise ConnectorError(
            CONNECTOR,
            f"'to' must be exactly one address, not {untrusted_to[:100]!r}",
            retryable=False,
        )
    return address


def _message_id(untrusted_id: str) -> str:
    match = _MSG_ID.match(untrusted_id.strip())
    if match is None:
        raise ConnectorError(
            CONNECTOR, f"'in_reply_to' is not a Message-ID: {untrusted_id[:100]!r}", retryable=False
        )
    return f"<{match[1]}>"


class _Mailer:
    def __init__(
        self, config: EmailChannelConfig, secrets: SecretStore, egress: Egress, timeout: float
    ) -> None:
        self._config = config
        self._secrets = secrets
        self._egress = egress
        self._timeout = timeout

    async def send(self, args: Mapping[str, ArgValue], key: str) -> dict[str, str]:
        message, recipient = build_message(args, key, self._config.account)
        reply = await self._submit(message, recipient)
        return {"message_id": str(message["Message-ID"]), "to": recipient, "server": reply}

    async def draft(self, args: Mapping[str, ArgValue], key: str) -> dict[str, str]:
        """Append to the drafts mailbox with ``\\Draft``, unless this key's draft is there."""
        message, recipient = build_message(args, key, self._config.account)
        message_id = str(message["Message-ID"])
        settings = self._config.imap
        session = await open_session(
            settings, self._secrets, self._egress, mailbox=None, timeout=self._timeout
        )
        password = self._secrets.get(settings.password_secret)
        try:
            mailbox = settings.drafts_mailbox
            if not await in_thread(session.has_message_id, mailbox, message_id, password=password):
                raw = message.as_bytes()
                await in_thread(session.append, mailbox, raw, [b"\\Draft"], password=password)
        finally:
            await asyncio.to_thread(session.close)
        return {"message_id": message_id, "to": recipient, "mailbox": settings.drafts_mailbox}

    async def _submit(self, message: EmailMessage, recipient: str) -> str:
        settings = self._config.smtp
        pinned = await self._egress.connect_target(CONNECTOR, settings.host, settings.port)
        if settings.tls == "insecure-plaintext":
            refuse_plaintext_off_loopback(CONNECTOR, pinned)
        password = self._secrets.get(settings.password_secret)
        try:
            return await self._session(pinned, password, message, recipient)
        except ConnectorError:
            raise
        except Exception as exc:
            raise smtp_error(exc, password) from None

    async def _session(
        self, pinned: Pinned, password: str, message: EmailMessage, recipient: str
    ) -> str:
        settings = self._config.smtp
        client = aiosmtplib.SMTP(
            hostname=pinned.host,  # with a socket given, used only for TLS (SNI, verification)
            sock=await _open_socket(pinned, self._timeout),
            use_tls=settings.tls == "tls",
            start_tls=settings.tls == "starttls",
            tls_context=tls_context(settings.ca_file),
            local_hostname=account_domain(self._config.account),  # no getfqdn() DNS query
            timeout=self._timeout,
        )
        async with client:
            await client.login(settings.username, password)
            _refused, reply = await client.send_message(
                message, sender=self._config.account, recipients=[recipient]
            )
        return reply[:200]


async def _open_socket(pinned: Pinned, timeout: float) -> socket.socket:
    """A connected non-blocking socket to the first pinned address that answers."""
    loop = asyncio.get_running_loop()
    last: BaseException | None = None
    for address in pinned.addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (str(address), pinned.port))
        except (OSError, TimeoutError) as exc:
            sock.close()
            last = exc
            continue
        return sock
    raise ConnectorError(CONNECTOR, f"no address of {pinned.host} answered: {last}")


def smtp_error(exc: BaseException, password: str) -> ConnectorError:
    """What went wrong, without secrets, and whether retrying may help (4xx yes, 5xx no)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ConnectorError(
            CONNECTOR, f"TLS certificate not accepted: {cause.verify_message}", retryable=False
        )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = scrub(exc.message, password)[:300]
        what = "login refused" if isinstance(exc, aiosmtplib.SMTPAuthenticationError) else "refused"
        return ConnectorError(CONNECTOR, f"{what}: {exc.code} {text}", retryable=exc.code < 500)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return ConnectorError(CONNECTOR, scrub(str(exc), password)[:300], retryable=False)
    detail = scrub(str(exc) or type(exc).__name__, password)[:300]
    return ConnectorError(CONNECTOR, f"connection failed: {detail}", retryable=True)
