"""The Slack connector against the loopback Slack emulator (HTTP + Socket Mode).

Every test drives the real client code (SlackSource, SlackWebApi, the action) through
the real egress layer to real sockets; the emulator speaks Slack's request and
response shapes. No timing assertions: waits are upper bounds only.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from threezone.config.schema import EgressConfig, EgressRule, SlackChannelConfig
from threezone.connectors.base import ConnectorState, RawItem
from threezone.connectors.slack import SlackSource, SlackWebApi, slack_actions
from threezone.errors import ConnectorError
from threezone.executor.egress import Egress, StaticResolver
from threezone.executor.inbox import Inbox
from threezone.executor.secrets import SecretStore
from threezone.readers.slack import read_slack
from threezone.testing.slack_emulator import APP_TOKEN, BOT_TOKEN, SlackEmulator

T = TypeVar("T")
ALLOWED_CHANNEL = "C0ALLOWED"
OWNER = "U0OWNER"
STRANGER = "U0STRANGER"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class FakeSleep:
    """Records the back-offs asked for instead of waiting them out."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Rig:
    slack: SlackEmulator
    source: SlackSource
    api: SlackWebApi
    sleep: FakeSleep
    state: ConnectorState


def _egress(slack: SlackEmulator, host: str = "127.0.0.1") -> Egress:
    rules = [
        EgressRule(connector="slack", host=host, port=slack.http_port),
        EgressRule(connector="slack", host=host, port=slack.ws_port),
    ]
    return Egress(
        EgressConfig(allow=rules, allow_private=["127.0.0.0/8"]),
        StaticResolver({host: ["127.0.0.1"]}) if host != "127.0.0.1" else None,
    )


def _secrets(app: str = APP_TOKEN, bot: str = BOT_TOKEN) -> SecretStore:
    return SecretStore({"SLACK_APP_TOKEN": app, "SLACK_BOT_TOKEN": bot})


@asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    secrets: SecretStore | None = None,
    server_tls: ssl.SSLContext | None = None,
    client_tls: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Rig]:
    async with SlackEmulator(ssl_context=server_tls, host_name=host) as slack:
        config = SlackChannelConfig(
            api_base=slack.base_url, allowed_channels=[ALLOWED_CHANNEL], allowed_users=[OWNER]
        )
        egress = _egress(slack, host)
        sleep = FakeSleep()
        store = secrets or _secrets()
        api = SlackWebApi(config, store, egress, ssl_context=client_tls, sleep=sleep)
        state = ConnectorState.open(tmp_path / "connectors.db")
        source = SlackSource(
            config, store, egress, state, ssl_context=client_tls, sleep=sleep, api=api
        )
        try:
            yield Rig(slack, source, api, sleep, state)
        finally:
            await source.close()
            await api.aclose()
            state.close()


async def fetch_one(source: SlackSource, timeout: float = 10.0) -> RawItem:
    items = await source.fetch(timeout)
    assert len(items) == 1, items
    return items[0]


# --- receiving ------------------------------------------------------------------------------


def test_a_user_message_arrives_raw_and_the_reader_accepts_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            event_id = await r.slack.user_message(ALLOWED_CHANNEL, STRANGER, "lunch at *noon*?")
            item = await fetch_one(r.source)
            assert item.source_ref == event_id
            # Exactly the envelope's bytes as sent, not a re-encoding.
            assert item.untrusted_raw == r.slack.deliveries[-1].frame
            assert item.trigger.channel == "slack"
            assert item.trigger.sender == STRANGER
            assert item.trigger.sender_authenticated is True
            assert item.trigger.account == "T0EMULATE:U0THREEZONE"
            assert item.trigger.flagged is False
            assert not item.oversized
            message = read_slack(item.untrusted_raw, f"slack:{item.source_ref}")
            assert "lunch at *noon*?" in message.body
            assert message.sender == f"slack:{STRANGER}"

    run(scenario())


def test_acknowledgement_is_sent_only_by_acknowledge(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            inbox = Inbox.open(tmp_path / "inbox.db")
            event_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "first")
            other_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "second")
            first = await fetch_one(r.source)
            await r.source.acknowledge((await fetch_one(r.source)).source_ref)
            # Frames are processed in order: once the second ack arrived, any ack of
            # the first would have too.
            await r.slack.wait_acked(other_id)
            assert list(r.slack.acked) == [other_id]
            # Unacknowledged, the first is redelivered when the connection goes away.
            await r.slack.drop_connections()
            again = await fetch_one(r.source)
            assert again.source_ref == first.source_ref == event_id
            retries = [(d.event_id, d.retry_attempt) for d in r.slack.deliveries]
            assert retries == [(event_id, 0), (other_id, 0), (event_id, 1)]
            assert b'"retry_reason": "timeout"' in again.untrusted_raw
            # The inbox recognises the redelivery by (channel, source_ref).
            for item in (first, again):
                inbox.receive("slack", item.source_ref, item.untrusted_raw, item.trigger)
            assert len(inbox.pending()) == 1
            await r.source.acknowledge(again.source_ref)
            assert await r.slack.wait_acked(event_id) == r.slack.deliveries[-1].envelope_id
            assert r.state.get("slack", "last_acknowledged") == event_id
            # Once acknowledged it is not delivered again, even on a new connection.
            await r.slack.drop_connections()
            assert await r.source.fetch(0.3) == []
            assert r.slack.connections_opened == 3
            assert len(r.slack.deliveries) == 3
            await r.source.acknowledge(event_id)  # idempotent
            await r.source.acknowledge("Ev-unknown")
            inbox.close()

    run(scenario())


def test_refresh_requested_reconnects_and_loses_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            acked_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "one")
            await r.source.acknowledge((await fetch_one(r.source)).source_ref)
            await r.slack.wait_acked(acked_id)
            unacked_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "two")
            assert (await fetch_one(r.source)).source_ref == unacked_id
            await r.slack.request_refresh()
            later_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "three")
            got = [(await fetch_one(r.source)).source_ref for _ in range(2)]
            assert got == [unacked_id, later_id]
            assert r.slack.connections_opened == 2
            for ref in got:
                await r.source.acknowledge(ref)
            await r.slack.wait_acked(later_id)
            await r.slack.wait_acked(unacked_id)

    run(scenario())


def test_a_disconnect_warning_moves_to_a_new_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            first = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "before")
            item = await fetch_one(r.source)
            await r.slack.request_refresh("warning", close=False)
            second = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "after")
            # The new connection also gets the unacknowledged first event again.
            refs = [(await fetch_one(r.source)).source_ref for _ in range(2)]
            assert refs == [first, second]
            assert r.slack.connections_opened == 2
            # Acknowledged under the envelope_id of its latest delivery.
            await r.source.acknowledge(item.source_ref)
            await r.slack.wait_acked(first)

    run(scenario())


def test_a_connection_that_keeps_dropping_becomes_a_retryable_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            r.slack.drop_before_hello = True
            with pytest.raises(ConnectorError, match="3 connections in a row") as caught:
                await r.source.fetch(30)
            assert caught.value.retryable is True
            assert r.slack.connections_opened == 3
            assert r.sleep.delays == [0.5, 1.0]  # backing off between attempts
            r.slack.drop_before_hello = False
            event_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "still here")
            assert (await fetch_one(r.source)).source_ref == event_id

    run(scenario())


def test_failures_to_connect_are_typed_and_keep_the_ticket_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            r.slack.fail("auth.test", "internal_error")
            with pytest.raises(ConnectorError, match="internal_error") as caught:
                await r.source.fetch(5)
            assert caught.value.retryable is True
            r.slack.socket_url_override = f"ws://127.0.0.1:{r.slack.ws_port}/link/?ticket=bad"
            with pytest.raises(ConnectorError, match="cannot open the WebSocket") as failed:
                await r.source.fetch(5)
            assert "ticket=bad" not in str(failed.value)
            r.slack.socket_url_override = None
            event_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "still here")
            assert (await fetch_one(r.source)).source_ref == event_id

    run(scenario())


def test_other_channels_and_users_are_acknowledged_and_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            elsewhere = await r.slack.user_message("C0ELSEWHERE", STRANGER, "not for you")
            dm = await r.slack.user_message("D0OWNERDM", OWNER, "from the owner, in a DM")
            item = await fetch_one(r.source)
            assert item.source_ref == dm  # an allowed user counts anywhere
            assert await r.slack.wait_acked(elsewhere)
            assert [(d.source_ref, d.reason) for d in r.source.dropped] == [
                (elsewhere, "channel and user not allowed")
            ]
            assert dm not in r.slack.acked

    run(scenario())


def test_own_bot_messages_and_non_user_subtypes_are_ignored(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            ignored = [
                await r.slack.bot_message(ALLOWED_CHANNEL, "our own post"),
                await r.slack.bot_message(ALLOWED_CHANNEL, "another bot", own=False),
                await r.slack.edit_message(ALLOWED_CHANNEL, OWNER, "1.000001", "edited"),
                await r.slack.user_message(
                    ALLOWED_CHANNEL, OWNER, "joined", subtype="channel_join"
                ),
                await r.slack.send_event({"type": "app_mention", "user": OWNER, "text": "hi"}),
                await r.slack.send_event({"type": "reaction_added", "user": OWNER}),
                await r.slack.send_event({"type": "message"}, envelope_type="slash_commands"),
            ]
            wanted = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "a real message")
            assert (await fetch_one(r.source)).source_ref == wanted
            for event_id in ignored:
                await r.slack.wait_acked(event_id)
            assert [d.reason for d in r.source.dropped] == [
                "written by this app",
                "message subtype 'bot_message'",
                "message subtype 'message_changed'",
                "message subtype 'channel_join'",
                "event type 'app_mention'",
                "event type 'reaction_added'",
                "envelope type 'slash_commands'",
            ]

    run(scenario())


def test_the_agents_own_post_comes_back_and_does_not_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            (post,) = slack_actions(r.api)
            await post.run({"channel": ALLOWED_CHANNEL, "text": "hello"}, "a" * 32)
            assert await r.source.fetch(0.5) == []
            assert [d.reason for d in r.source.dropped] == ["written by this app"]
            assert len(r.slack.acked) == 1

    run(scenario())


# --- posting ----------------------------------------------------------------------------------


def test_post_message_and_thread_replies(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            (post,) = slack_actions(r.api)
            assert post.name == "slack.post_message"
            assert [p.name for p in post.params] == ["channel", "text", "thread_ts"]
            key = "0123456789abcdef0123456789abcdef"
            top = await post.run({"channel": ALLOWED_CHANNEL, "text": "status: ok"}, key)
            assert top["channel"] == ALLOWED_CHANNEL
            assert top["ts"]
            reply = await post.run(
                {"channel": ALLOWED_CHANNEL, "text": "in thread", "thread_ts": top["ts"]}, key
            )
            first, second = r.slack.posts
            assert first["text"] == "status: ok"
            assert "thread_ts" not in first
            assert second["thread_ts"] == top["ts"]
            assert reply["ts"] != top["ts"]
            assert first["metadata"]["event_payload"]["idempotency_key"] == key
            assert first["unfurl_links"] is False
            assert first["unfurl_media"] is False
            with pytest.raises(ConnectorError, match="thread_not_found") as caught:
                await post.run({"channel": ALLOWED_CHANNEL, "text": "x", "thread_ts": "9.999"}, key)
            assert caught.value.retryable is False

    run(scenario())


def test_invalid_auth_is_final_and_never_shows_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_bot = "xoxb-9999999999-wrong-but-secret-value-AAAA"
    wrong_app = "xapp-1-A0WRONG-1-wrong-but-secret-value-BBBB"

    async def scenario() -> list[ConnectorError]:
        errors: list[ConnectorError] = []
        async with rig(tmp_path, secrets=_secrets(app=wrong_app, bot=wrong_bot)) as r:
            (post,) = slack_actions(r.api)
            with pytest.raises(ConnectorError) as posting:
                await post.run({"channel": ALLOWED_CHANNEL, "text": "hi"}, "b" * 32)
            errors.append(posting.value)
            with pytest.raises(ConnectorError) as fetching:
                await r.source.fetch(5)
            errors.append(fetching.value)
            assert r.slack.attempts("chat.postMessage") == 1  # not retried
        return errors

    with caplog.at_level(logging.DEBUG):
        errors = run(scenario())
    for error in errors:
        assert error.retryable is False
        assert "invalid_auth" in str(error)
        seen = " ".join([str(error), repr(error), repr(error.args), repr(error.__cause__)])
        for token in (wrong_bot, wrong_app, "wrong-but-secret"):
            assert token not in seen
            assert token not in caplog.text


def test_the_app_token_is_not_accepted_where_the_bot_token_is_needed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, secrets=_secrets(bot=APP_TOKEN)) as r:
            with pytest.raises(ConnectorError, match="not_allowed_token_type") as caught:
                await r.api.post_message(ALLOWED_CHANNEL, "hi", None, "c" * 32)
            assert caught.value.retryable is False

    run(scenario())


def test_rate_limits_wait_for_retry_after_and_are_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            r.slack.rate_limit("chat.postMessage", retry_after=7, times=2)
            result = await r.api.post_message(ALLOWED_CHANNEL, "eventually", None, "d" * 32)
            assert result["ts"]
            assert r.sleep.delays == [7.0, 7.0]
            statuses = [c.status for c in r.slack.calls if c.method == "chat.postMessage"]
            assert statuses == [429, 429, 200]
            assert len(r.slack.posts) == 1

            r.slack.rate_limit("chat.postMessage", retry_after=1, times=4)
            with pytest.raises(ConnectorError, match="rate limited") as storm:
                await r.api.post_message(ALLOWED_CHANNEL, "never", None, "e" * 32)
            assert storm.value.retryable is True
            assert r.slack.attempts("chat.postMessage") == 3 + 4  # max_attempts
            assert len(r.slack.posts) == 1

            r.slack.rate_limit("chat.postMessage", retry_after=3600)
            with pytest.raises(ConnectorError, match="3600"):
                await r.api.post_message(ALLOWED_CHANNEL, "too long a wait", None, "f" * 32)
            assert r.sleep.delays == [7.0, 7.0, 1.0, 1.0, 1.0]

    run(scenario())


def test_malformed_replies_are_connector_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            r.slack.malformed("chat.postMessage")
            with pytest.raises(ConnectorError, match="malformed response") as posting:
                await r.api.post_message(ALLOWED_CHANNEL, "hi", None, "a" * 32)
            assert posting.value.retryable is True
            r.slack.malformed("apps.connections.open")
            with pytest.raises(ConnectorError, match="malformed response"):
                await r.source.fetch(5)
            r.slack.socket_url_override = "https://127.0.0.1/not-a-socket"
            with pytest.raises(ConnectorError, match="https://") as scheme:
                await r.source.fetch(5)
            assert scheme.value.retryable is False

    run(scenario())


def test_a_socket_url_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            r.slack.socket_url_override = "ws://127.0.0.1:1/link/?ticket=x"
            with pytest.raises(ConnectorError, match="port 1 is not allowed") as caught:
                await r.source.fetch(5)
            assert caught.value.retryable is False
            assert r.slack.connections_opened == 0

    run(scenario())


# --- TLS ------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _tls(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = _self_signed(tmp_path, name)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_wss_is_verified_against_the_host_name(tmp_path: Path) -> None:
    server, client = _tls(tmp_path, "slack.test")

    async def scenario() -> None:
        async with rig(tmp_path, server_tls=server, client_tls=client, host="slack.test") as r:
            assert r.slack.base_url.startswith("https://slack.test:")
            event_id = await r.slack.user_message(ALLOWED_CHANNEL, OWNER, "over TLS")
            item = await fetch_one(r.source)
            assert item.source_ref == event_id
            await r.source.acknowledge(item.source_ref)
            await r.slack.wait_acked(event_id)
            # Behind an https:// API, a plain ws:// socket URL is refused outright.
            await r.slack.request_refresh()
            r.slack.socket_url_override = f"ws://slack.test:{r.slack.ws_port}/link/?ticket=t"
            with pytest.raises(ConnectorError, match="ws://") as caught:
                await r.source.fetch(5)
            assert caught.value.retryable is False

    run(scenario())


def test_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    server, _ = _tls(tmp_path, "impostor.test")
    _, client = _tls(tmp_path, "slack.test")

    async def scenario() -> None:
        async with rig(tmp_path, server_tls=server, client_tls=client, host="slack.test") as r:
            with pytest.raises(ConnectorError) as caught:
                await r.source.fetch(5)
            assert caught.value.retryable is True
            assert r.slack.calls == []

    run(scenario())
