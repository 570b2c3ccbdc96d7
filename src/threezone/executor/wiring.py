"""From a config to a running agent: which sources, actions, owner channel and LLM.

The one place that knows every connector. Each is built only when its
``[channels.*]`` section exists; credentials come from the secret store, and every
network connection goes through the executor's egress layer. What a connector drops
(messages from chats or users that are not allowed) is audited, never silently lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

from threezone.backends.base import Backend
from threezone.config.load import LoadedConfig
from threezone.connectors.base import ConnectorState, Source
from threezone.connectors.imap import ImapSource
from threezone.connectors.maildir import MaildirPoller
from threezone.connectors.slack import SlackSource, SlackWebApi, slack_actions
from threezone.connectors.smtp import email_actions_smtp
from threezone.connectors.telegram import TelegramSource
from threezone.executor.agent import Agent
from threezone.executor.approvals import Approval, ApprovalQueue
from threezone.executor.core import Executor
from threezone.executor.egress import Resolver
from threezone.executor.secrets import SecretStore

STATE_FILE = "connectors.sqlite3"
Hook = Callable[[], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class Parts:
    sources: list[Source] = dataclasses.field(default_factory=list)
    hooks: dict[int, Hook] = dataclasses.field(default_factory=dict)
    closers: list[Hook] = dataclasses.field(default_factory=list)
    owner: TelegramOwner | None = None


def build_agent(
    loaded: LoadedConfig, backend: Backend, *, resolver: Resolver | None = None
) -> Agent:
    executor = Executor(loaded, backend, resolver=resolver)
    state = ConnectorState.open(executor.state_dir / STATE_FILE)
    parts = Parts()
    if executor.source is not None:  # the Maildir of [channels.email] source = "maildir"
        executor.source.ensure()
        parts.sources.append(MaildirPoller(executor.source))
    secrets = executor.secrets or SecretStore.empty()
    _imap(loaded, executor, secrets, state, parts)
    _telegram(loaded, executor, secrets, state, parts)
    _slack(loaded, executor, secrets, state, parts)
    return Agent(
        executor,
        parts.sources,
        owner=parts.owner,
        state=state,
        after_fetch=parts.hooks,
        closers=parts.closers,
    )


def _imap(
    loaded: LoadedConfig,
    executor: Executor,
    secrets: SecretStore,
    state: ConnectorState,
    parts: Parts,
) -> None:
    cfg = loaded.config.channels.email
    if cfg is None or cfg.source != "imap":
        return
    source = ImapSource(cfg, secrets, executor.egress, state, loaded.config.executor.max_raw_bytes)
    executor.register_actions(email_actions_smtp(cfg, secrets, executor.egress))
    parts.sources.append(source)


def _telegram(
    loaded: LoadedConfig,
    executor: Executor,
    secrets: SecretStore,
    state: ConnectorState,
    parts: Parts,
) -> None:
    cfg = loaded.config.channels.telegram
    if cfg is None:
        return
    source = TelegramSource(
        cfg, secrets, executor.egress, state, max_raw_bytes=loaded.config.executor.max_raw_bytes
    )
    executor.register_actions(source.actions())
    parts.sources.append(source)
    owner = TelegramOwner(source, executor)
    if cfg.owner_chat is not None:
        parts.owner = owner
    parts.hooks[id(source)] = owner.after_fetch


def _slack(
    loaded: LoadedConfig,
    executor: Executor,
    secrets: SecretStore,
    state: ConnectorState,
    parts: Parts,
) -> None:
    cfg = loaded.config.channels.slack
    if cfg is None:
        return
    api = SlackWebApi(cfg, secrets, executor.egress)
    source = SlackSource(
        cfg,
        secrets,
        executor.egress,
        state,
        api=api,
        max_raw_bytes=loaded.config.executor.max_raw_bytes,
    )
    executor.register_actions(slack_actions(api))
    parts.sources.append(source)
    parts.closers.append(api.aclose)

    async def audit_dropped() -> None:
        while source.dropped:
            dropped = source.dropped.popleft()
            executor.audit.append(
                "dropped", {"channel": "slack", **dataclasses.asdict(dropped)}, durable=False
            )

    parts.hooks[id(source)] = audit_dropped


class TelegramOwner:
    """The owner's Telegram chat: approvals with buttons, alerts, and what was dropped."""

    def __init__(self, source: TelegramSource, executor: Executor) -> None:
        self.source = source
        self.executor = executor

    async def send_approval(self, entry: Approval) -> None:
        await self.source.send_approval(entry)

    async def send_alert(self, text: str) -> None:
        await self.source.send_alert(text)

    async def handle_decisions(self, queue: ApprovalQueue) -> int:
        """Settle button presses into the queue; each is audited, refusals above all."""
        outcomes = await self.source.settle_callbacks(queue)
        for outcome in outcomes:
            self.executor.audit.append(
                "approval_button",
                {
                    "decision": outcome.decision,
                    "approval": outcome.approval_id,
                    "user": outcome.press.user_id,
                    "chat": outcome.press.chat_id,
                    "reason": outcome.reason[:500],
                    "problems": list(outcome.problems)[:5],
                },
            )
        return len(outcomes)

    async def after_fetch(self) -> None:
        """After every fetch: presses must be settled before the offset can move on."""
        if await self.handle_decisions(self.executor.approvals):
            await self.executor.run_approvals()
        for dropped in self.source.take_dropped():
            self.executor.audit.append(
                "dropped", {"channel": "telegram", **dataclasses.asdict(dropped)}, durable=False
            )
