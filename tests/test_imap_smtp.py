"""The email channel against real servers: Dovecot (IMAP) and Postfix (SMTP) on loopback.

Every test drives the same connector code a user runs, through the egress layer, over
TLS verified against a throwaway CA. Messages are delivered the way mail arrives: over
LMTP into Dovecot (which wakes IDLE), or submitted to Postfix, which hands them on.
No timing assertions: waits are bounded by pytest's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, TypeVar

import pytest

from threezone.config.schema import (
    EgressConfig,
    EmailChannelConfig,
    ImapConfig,
    TlsMode,
)
from threezone.connectors.base import ConnectorState, RawItem
from threezone.connectors.imap import ImapSource, open_session
from threezone.connectors.mailauth import authenticated_sender, verdict
from threezone.connectors.smtp import build_message, email_actions_smtp
from threezone.errors import ConnectorError, EgressDenied
from threezone.executor.actions import ActionSpec
from threezone.executor.egress import Egress, StaticResolver
from threezone.executor.secrets import SecretStore
from threezone.testing.mailserver import MAIL_HOST, TEST_DOMAIN, MailServers, missing

T = TypeVar("T")
WRONG_HOST = "wrong.test.example"  # resolves to the same server, which has no cert for it
PUBLIC_HOST = "mail.public.example"  # "resolves" to a public address; never connected to
KEY = "0123456789abcdef0123456789abcdef"

pytestmark = [
    pytest.mark.skipif(
        missing(smtp=False) is not None, reason=f"Dovecot unavailable: {missing(smtp=False)}"
    ),
    pytest.mark.timeout(120),
]


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers() -> Iterator[MailServers]:
    with MailServers.start(smtp=missing() is None) as running:
        yield running


@pytest.fixture
def mail(servers: MailServers) -> MailServers:
    """The shared servers with an empty INBOX and Drafts (Dovecot rescans the Maildir)."""
    for folder in (servers.maildir, servers.maildir / ".Drafts"):
        for sub in ("new", "cur"):
            for path in (folder / sub).glob("*"):
                path.unlink()
    return servers


@pytest.fixture
def smtp_mail(mail: MailServers) -> MailServers:
    """The servers, for a test that needs Postfix too (which only starts as root)."""
    if mail.smtp_port == 0:
        pytest.skip(f"Postfix unavailable: {missing()}")
    return mail


@pytest.fixture
def state(tmp_path: Path) -> Iterator[ConnectorState]:
    opened = ConnectorState.open(tmp_path / "connectors.db")
    yield opened
    opened.close()


def config_for(
    servers: MailServers,
    *,
    tls: TlsMode = "tls",
    host: str = MAIL_HOST,
    idle: bool = True,
    smtp_tls: TlsMode = "tls",
) -> EmailChannelConfig:
    return servers.channel_config(imap_tls=tls, smtp_tls=smtp_tls, host=host, idle=idle)


def egress_for(servers: MailServers, *extra_ports: int) -> Egress:
    names = {MAIL_HOST: "127.0.0.1", WRONG_HOST: "127.0.0.1", PUBLIC_HOST: "93.184.216.34"}
    return servers.egress(names, *extra_ports)


def secrets_for(servers: MailServers, password: str | None = None) -> SecretStore:
    return servers.secrets(password)


def source_for(
    servers: MailServers,
    state: ConnectorState,
    config: EmailChannelConfig | None = None,
    *,
    egress: Egress | None = None,
    max_raw_bytes: int = 1024 * 1024,
    password: str | None = None,
) -> ImapSource:
    return ImapSource(
        config or config_for(servers),
        secrets_for(servers, password),
        egress or egress_for(servers),
        state,
        max_raw_bytes,
    )


def actions_for(
    servers: MailServers, config: EmailChannelConfig | None = None
) -> dict[str, ActionSpec]:
    specs = email_actions_smtp(
        config or config_for(servers), secrets_for(servers), egress_for(servers)
    )
    return {spec.name: spec for spec in specs}


def message(subject: str, *, sender: str = "partner@partner.example", extra: str = "") -> bytes:
    return (
        f"{extra}From: {sender}\r\nTo: owner@{TEST_DOMAIN}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@partner.example>\r\n\r\nHello, {subject}.\r\n"
    ).encode()


def deliver(servers: MailServers, raw: bytes) -> None:
    servers.deliver(raw)


def subjects(items: list[RawItem]) -> list[str]:
    return [str(parse(item.untrusted_raw)["Subject"]) for item in items]


def parse(raw: bytes) -> EmailMessage:
    parsed = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def fetch_all(source: ImapSource, *, ack: bool = True) -> list[RawItem]:
    items = await source.fetch(timeout=0)
    for item in items if ack else []:
        await source.acknowledge(item.source_ref)
    return items


# --- fetching -----------------------------------------------------------------------------


def test_a_new_agent_starts_with_new_mail_not_the_mailbox_history(
    mail: MailServers, state: ConnectorState
) -> None:
    """``start = "new"`` (the default): what was there before the first start is history."""
    config = mail.channel_config(start="new")

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        deliver(mail, message("old one"))
        source = source_for(mail, state, config)
        first = subjects(await fetch_all(source))
        deliver(mail, message("new one"))
        second = subjects(await fetch_all(source))
        await source.close()
        again = source_for(mail, state, config)  # a restart keeps the same starting point
        third = subjects(await fetch_all(again))
        await again.close()
        return first, second, third

    assert run(scenario()) == ([], ["new one"], [])


def test_fetch_acknowledge_restart_fetches_nothing_twice_and_misses_nothing(
    mail: MailServers, state: ConnectorState
) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str], list[str]]:
        deliver(mail, message("first"))
        deliver(mail, message("second"))
        source = source_for(mail, state)
        first = await fetch_all(source)
        deliver(mail, message("third"))
        unacked = await fetch_all(source, ack=False)  # stored? no: the executor crashed
        await source.close()
        deliver(mail, message("fourth"))  # arrives while nothing runs
        restarted = source_for(mail, state)
        again = await fetch_all(restarted)
        after = await fetch_all(restarted)
        await restarted.close()
        return subjects(first), subjects(unacked), subjects(again), subjects(after)

    first, unacked, again, after = run(scenario())
    assert first == ["first", "second"]
    assert unacked == ["third"]
    assert again == ["third", "fourth"]  # the unacknowledged one again, the new one once
    assert after == []


def test_source_refs_are_stable_and_a_uidvalidity_change_refetches_everything(
    mail: MailServers, state: ConnectorState
) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        deliver(mail, message("kept"))
        source = source_for(mail, state)
        first = await fetch_all(source)
        await source.close()
        # The server renumbered the mailbox (new UIDVALIDITY): the stored cursor is void.
        key = f"cursor:{mail.user}@{MAIL_HOST}/INBOX"
        stored = state.get("imap", key)
        validity, _sep, uid = stored.partition(":")
        state.set("imap", key, f"{int(validity) + 1}:{int(uid) + 1000}")
        renumbered = source_for(mail, state)
        again = await fetch_all(renumbered)
        await renumbered.close()
        return (
            [i.source_ref for i in first],
            [i.source_ref for i in again],
            [state.get("imap", key)],
        )

    first, again, cursor = run(scenario())
    assert again == first  # fetched again, under the same ref: the inbox deduplicates
    assert not cursor[0].endswith(":0")


def test_oversized_mail_is_fetched_truncated_and_marked(
    mail: MailServers, state: ConnectorState
) -> None:
    deliver(mail, message("big", extra="X-Filler: " + "x" * 6000 + "\r\n"))

    async def scenario() -> list[RawItem]:
        source = source_for(mail, state, max_raw_bytes=1024)
        items = await fetch_all(source)
        await source.close()
        return items

    [item] = run(scenario())
    assert item.oversized
    assert len(item.untrusted_raw) == 1024


def _wait_until_idling(source: ImapSource) -> Coroutine[Any, Any, None]:
    async def wait() -> None:
        while not (source._session is not None and source._session.idling):
            await asyncio.sleep(0.05)

    return wait()


def test_idle_wakes_fetch_on_a_new_delivery(mail: MailServers, state: ConnectorState) -> None:
    async def scenario() -> list[str]:
        source = source_for(mail, state)  # poll_seconds does not matter: IDLE never polls
        waiting = asyncio.create_task(source.fetch(timeout=3600))
        await _wait_until_idling(source)  # the first search found nothing; now in IDLE
        await asyncio.to_thread(deliver, mail, message("pushed"))
        items = await waiting
        await source.close()
        return subjects(items)

    assert run(scenario()) == ["pushed"]


def test_polling_finds_new_mail_when_idle_is_off(mail: MailServers, state: ConnectorState) -> None:
    async def scenario() -> tuple[list[str], bool]:
        source = source_for(mail, state, config_for(mail, idle=False))
        waiting = asyncio.create_task(source.fetch(timeout=3600))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(deliver, mail, message("polled"))
        items = await waiting
        idled = source._session is not None and source._session.idling
        await source.close()
        return subjects(items), idled

    found, idled = run(scenario())
    assert found == ["polled"]
    assert not idled


def test_starttls_imap_fetches_too(mail: MailServers, state: ConnectorState) -> None:
    deliver(mail, message("over starttls"))

    async def scenario() -> list[str]:
        source = source_for(mail, state, config_for(mail, tls="starttls"))
        items = await fetch_all(source)
        await source.close()
        return subjects(items)

    assert run(scenario()) == ["over starttls"]


# --- trusted metadata ---------------------------------------------------------------------

GOOD = f"Authentication-Results: {MAIL_HOST}; dmarc=pass header.from=partner.example\r\n"
FORGED = (
    f"Authentication-Results: {MAIL_HOST}; dmarc=pass (p=reject) header.from=partner.example\r\n"
)


def test_only_the_providers_topmost_authentication_result_is_trusted(
    mail: MailServers, state: ConnectorState
) -> None:
    deliver(mail, message("vouched", extra=GOOD))
    other_server = (
        "Authentication-Results: mx.partner.example; dmarc=pass header.from=partner.example\r\n"
    )
    deliver(mail, message("forged below", extra=other_server + FORGED))
    failed = f"Authentication-Results: {MAIL_HOST}; dmarc=fail header.from=partner.example\r\n"
    deliver(mail, message("failed on top", extra=failed + FORGED))
    deliver(mail, message("no header"))

    async def scenario() -> list[RawItem]:
        source = source_for(mail, state)
        items = await fetch_all(source)
        await source.close()
        return items

    items = run(scenario())
    by_subject = {s: item.trigger for s, item in zip(subjects(items), items, strict=True)}
    assert by_subject["vouched"].sender == "partner@partner.example"
    assert by_subject["vouched"].sender_authenticated
    for subject in ("forged below", "failed on top", "no header"):
        assert by_subject[subject].sender is None
        assert not by_subject[subject].sender_authenticated
    assert all(t.account == mail.user and t.channel == "email" for t in by_subject.values())


@pytest.mark.parametrize(
    ("header", "sender"),
    [
        (f"{MAIL_HOST}; dmarc=pass header.from=partner.example", "partner@partner.example"),
        (
            f"{MAIL_HOST.upper()} 1; DMARC=pass header.from=Partner.Example",
            "partner@partner.example",
        ),
        (f"{MAIL_HOST}; dmarc=pass header.from=evil.example", None),  # another domain
        (f"{MAIL_HOST}.evil; dmarc=pass header.from=partner.example", None),  # another server
        (f"{MAIL_HOST}; spf=pass (dmarc=pass header.from=partner.example) smtp.mailfrom=x", None),
        (f"{MAIL_HOST}; dmarc=none; dkim=pass header.from=partner.example", None),
        (f"{MAIL_HOST}; dmarc=passed header.from=partner.example", None),
    ],
)
def test_verdict_reads_only_the_dmarc_result(header: str, sender: str | None) -> None:
    assert verdict(header, "Partner@partner.example", MAIL_HOST) == sender


def test_garbage_headers_mean_not_authenticated() -> None:
    assert authenticated_sender(b"\xff\xfe\x00" * 1000, MAIL_HOST) is None
    assert (
        authenticated_sender(GOOD.encode() + b"From: partner@partner.example\r\n\r\n", "") is None
    )


# --- sending ------------------------------------------------------------------------------


def _sent(mail: MailServers, state: ConnectorState, count: int) -> list[EmailMessage]:
    """Fetch until ``count`` messages arrived (Postfix delivers asynchronously)."""

    async def scenario() -> list[EmailMessage]:
        source = source_for(mail, state)
        found: list[EmailMessage] = []
        while len(found) < count:
            for item in await source.fetch(timeout=30):
                await source.acknowledge(item.source_ref)
                found.append(parse(item.untrusted_raw))
        await source.close()
        return found

    return run(scenario())


def test_send_over_smtp_and_read_it_back_with_the_message_id_from_the_key(
    smtp_mail: MailServers, state: ConnectorState
) -> None:
    mail = smtp_mail
    send = actions_for(mail)["email.send"]
    args = {"to": mail.user, "subject": "hello", "body": "Sent by the agent."}
    result = run(send.run(args, KEY))
    [got] = _sent(mail, state, 1)
    assert result["message_id"] == f"<{KEY}@{TEST_DOMAIN}>"
    assert got["Message-ID"] == f"<{KEY}@{TEST_DOMAIN}>"
    assert got["From"] == mail.user
    assert got.get_content().strip() == "Sent by the agent."


def test_a_retried_send_carries_the_same_message_id(
    smtp_mail: MailServers, state: ConnectorState
) -> None:
    mail = smtp_mail
    send = actions_for(mail, config_for(mail, smtp_tls="starttls"))["email.send"]
    args = {"to": mail.user, "subject": "twice", "body": "Retried after a crash."}
    run(send.run(args, KEY))
    run(send.run(args, KEY))
    first, second = _sent(mail, state, 2)
    assert first["Message-ID"] == second["Message-ID"] == f"<{KEY}@{TEST_DOMAIN}>"


def test_a_reply_sets_the_threading_headers(smtp_mail: MailServers, state: ConnectorState) -> None:
    mail = smtp_mail
    reply = actions_for(mail)["email.reply"]
    args = {
        "to": mail.user,
        "subject": "Re: plans",
        "body": "Yes.",
        "in_reply_to": "<p1@partner.example>",
    }
    run(reply.run(args, KEY))
    [got] = _sent(mail, state, 1)
    assert got["In-Reply-To"] == "<p1@partner.example>"
    assert got["References"] == "<p1@partner.example>"


def test_a_draft_is_appended_once_with_the_draft_flag(mail: MailServers) -> None:
    draft = actions_for(mail)["email.draft"]
    args = {"to": "someone@outside.example", "subject": "later", "body": "Draft text."}

    async def scenario() -> dict[int, dict[bytes, Any]]:
        await draft.run(args, KEY)
        await draft.run(args, KEY)  # a retry: the draft is already there
        config = config_for(mail)
        session = await open_session(
            config.imap, secrets_for(mail), egress_for(mail), mailbox="Drafts", timeout=30
        )
        uids = session.client.search(["ALL"])
        found: dict[int, dict[bytes, Any]] = session.client.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
        await asyncio.to_thread(session.close)
        return found

    found = run(scenario())
    [data] = found.values()
    assert b"\\Draft" in data[b"FLAGS"]
    assert parse(data[b"BODY[]"])["Message-ID"] == f"<{KEY}@{TEST_DOMAIN}>"


@pytest.mark.parametrize(
    "args",
    [
        {"to": "a@x.example\r\nBcc: evil@evil.example", "body": "b"},
        {"to": "a@x.example, evil@evil.example", "body": "b"},
        {"to": "a@x.example", "subject": "hi\nBcc: evil@evil.example", "body": "b"},
        {"to": "a@x.example", "body": "b", "in_reply_to": "<a@b>\r\nBcc: evil@evil.example"},
        {"to": "not an address", "body": "b"},
    ],
)
def test_header_injection_and_extra_recipients_are_refused(args: dict[str, str]) -> None:
    with pytest.raises(ConnectorError) as caught:
        build_message(args, KEY, "owner@test.example")
    assert not caught.value.retryable


def test_relaying_to_an_outside_domain_is_refused_by_the_server(smtp_mail: MailServers) -> None:
    mail = smtp_mail
    send = actions_for(mail)["email.send"]
    with pytest.raises(ConnectorError) as caught:
        run(send.run({"to": "someone@outside.example", "body": "leak"}, KEY))
    assert not caught.value.retryable
    assert "554" in str(caught.value)
    assert "Relay access denied" in str(caught.value)


# --- failures -----------------------------------------------------------------------------


def test_a_wrong_password_is_not_retryable_and_not_repeated(
    smtp_mail: MailServers, state: ConnectorState
) -> None:
    mail = smtp_mail
    wrong = "Tr0ub4dor&3-wrong-password"
    source = source_for(mail, state, password=wrong)
    with pytest.raises(ConnectorError) as imap_failure:
        run(source.fetch(timeout=0))
    specs = email_actions_smtp(config_for(mail), secrets_for(mail, wrong), egress_for(mail))
    with pytest.raises(ConnectorError) as smtp_failure:
        run(specs[0].run({"to": mail.user, "body": "x"}, KEY))
    for failure in (imap_failure.value, smtp_failure.value):
        assert not failure.retryable
        assert wrong not in str(failure)
        assert mail.password not in str(failure)
        assert "refused" in str(failure)


def test_a_certificate_for_another_name_is_refused(
    smtp_mail: MailServers, state: ConnectorState
) -> None:
    mail = smtp_mail
    config = config_for(mail, host=WRONG_HOST)
    source = source_for(mail, state, config)
    with pytest.raises(ConnectorError) as imap_failure:
        run(source.fetch(timeout=0))
    send = actions_for(mail, config)["email.send"]
    with pytest.raises(ConnectorError) as smtp_failure:
        run(send.run({"to": mail.user, "body": "x"}, KEY))
    for failure in (imap_failure.value, smtp_failure.value):
        assert not failure.retryable
        assert "certificate" in str(failure)


def test_insecure_plaintext_is_refused_off_loopback(
    mail: MailServers, state: ConnectorState
) -> None:
    config = config_for(
        mail, tls="insecure-plaintext", host=PUBLIC_HOST, smtp_tls="insecure-plaintext"
    )
    with pytest.raises(ConnectorError, match="only allowed for loopback") as imap_failure:
        run(source_for(mail, state, config).fetch(timeout=0))
    with pytest.raises(ConnectorError, match="only allowed for loopback") as smtp_failure:
        run(actions_for(mail, config)["email.send"].run({"to": mail.user, "body": "x"}, KEY))
    assert not imap_failure.value.retryable
    assert not smtp_failure.value.retryable


def test_a_host_outside_the_egress_allowlist_is_never_contacted(
    mail: MailServers, state: ConnectorState
) -> None:
    config = config_for(mail)
    egress = Egress(EgressConfig(allow=[], allow_private=["127.0.0.0/8"]), StaticResolver({}))
    with pytest.raises(EgressDenied):
        run(source_for(mail, state, config, egress=egress).fetch(timeout=0))


class CuttingProxy:
    """A loopback TCP proxy to the server that cuts its first connection after
    ``cut_after`` bytes from the server, then passes every later one through."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self.cut_after if self.connections == 1 else None
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self._pipe(client_r, server_w, None), self._pipe(server_r, client_w, limit)
        )

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None
    ) -> None:
        sent = 0
        try:
            while data := await reader.read(16384):
                if limit is not None and sent + len(data) > limit:
                    writer.write(data[: limit - sent])
                    break
                writer.write(data)
                sent += len(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


def test_a_connection_cut_mid_fetch_is_retryable_and_loses_nothing(
    mail: MailServers, state: ConnectorState
) -> None:
    deliver(mail, message("large", extra="X-Filler: " + "y" * 200_000 + "\r\n"))

    async def scenario() -> tuple[ConnectorError, list[str], int]:
        proxy = CuttingProxy(mail.imaps_port, cut_after=50_000)
        await proxy.start()
        config = config_for(mail)
        config = EmailChannelConfig(
            source="imap",
            account=config.account,
            authserv_id=config.authserv_id,
            imap=ImapConfig(
                host=MAIL_HOST,
                port=proxy.port,
                username=mail.user,
                ca_file=str(mail.ca_file),
                start="all",  # the message was delivered before this first start
            ),
        )
        source = source_for(mail, state, config, egress=egress_for(mail, proxy.port))
        try:
            await source.fetch(timeout=0)
        except ConnectorError as exc:
            failure = exc
        else:
            raise AssertionError("the cut connection went unnoticed")
        items = await fetch_all(source)  # reconnects through the proxy, now passing
        await source.close()
        await proxy.stop()
        return failure, subjects(items), proxy.connections

    failure, found, connections = run(scenario())
    assert failure.retryable
    assert found == ["large"]
    assert connections == 2


def test_a_server_restart_is_retryable_and_loses_nothing(
    mail: MailServers, state: ConnectorState
) -> None:
    async def scenario() -> tuple[ConnectorError, list[str]]:
        source = source_for(mail, state)
        assert await fetch_all(source) == []
        mail.stop_dovecot()
        try:
            try:
                await source.fetch(timeout=0)
            except ConnectorError as exc:
                failure = exc
            else:
                raise AssertionError("a stopped server went unnoticed")
        finally:
            mail.start_dovecot()
        deliver(mail, message("after restart"))
        items = await fetch_all(source)
        await source.close()
        return failure, subjects(items)

    failure, found = run(scenario())
    assert failure.retryable
    assert found == ["after restart"]


def test_a_server_going_away_during_idle_ends_the_wait_with_a_retryable_error(
    mail: MailServers, state: ConnectorState
) -> None:
    async def scenario() -> ConnectorError:
        source = source_for(mail, state)
        waiting = asyncio.create_task(source.fetch(timeout=3600))
        await _wait_until_idling(source)
        try:
            await asyncio.to_thread(mail.stop_dovecot)
            with pytest.raises(ConnectorError) as caught:
                await waiting  # not after an hour: as soon as the connection is gone
        finally:
            mail.start_dovecot()
        await source.close()
        return caught.value

    assert run(scenario()).retryable


def test_insecure_plaintext_works_on_loopback_only_for_tests(
    mail: MailServers, state: ConnectorState
) -> None:
    deliver(mail, message("in clear"))

    async def scenario() -> list[str]:
        source = source_for(mail, state, config_for(mail, tls="insecure-plaintext"))
        items = await fetch_all(source)
        await source.close()
        return subjects(items)

    assert run(scenario()) == ["in clear"]
