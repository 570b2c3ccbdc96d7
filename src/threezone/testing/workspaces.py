"""Throwaway workspaces for tests and benchmarks: the demo's, plus a channel or two."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import msgspec

from threezone.config.load import LoadedConfig, load_config
from threezone.config.schema import (
    Config,
    EgressConfig,
    EgressRule,
    LlmConfig,
    PlannerConfig,
    TelegramChannelConfig,
)
from threezone.demo import build_workspace
from threezone.executor.secrets import init_secrets, set_secret
from threezone.testing.llm_emulator import LlmEmulator
from threezone.testing.telegram_emulator import DEFAULT_TOKEN

OWNER = 1111
STRANGER = 2222


class Endpoint(Protocol):
    """Where an emulator listens (a :class:`TelegramEmulator`, or one in another process)."""

    @property
    def base_url(self) -> str: ...

    @property
    def port(self) -> int: ...


def replace_mails(loaded: LoadedConfig, mails: dict[str, bytes]) -> None:
    """The workspace's Maildir holds exactly ``mails`` (file name -> raw message)."""
    new = loaded.base / "mail" / "new"
    for old in new.iterdir():
        old.unlink()
    for name, raw in mails.items():
        (new / name).write_bytes(raw)


def telegram_workspace(tmp_path: Path, bot: Endpoint) -> LoadedConfig:
    """The demo workspace without its mails, plus Telegram through ``bot``.

    ``OWNER`` is the owner's chat and user; ``STRANGER`` an allowed chat whose sender
    is not the owner. The bot token is stored encrypted, as ``threezone init`` would.
    """
    loaded = load_config(build_workspace(tmp_path / "ws"))
    replace_mails(loaded, {})  # only Telegram traffic here
    telegram = TelegramChannelConfig(
        api_base=bot.base_url,
        allowed_chats=[OWNER, STRANGER],
        allowed_users=[OWNER],
        owner_chat=OWNER,
        poll_timeout=1,
    )
    channels = msgspec.structs.replace(loaded.config.channels, telegram=telegram)
    config = msgspec.structs.replace(loaded.config, channels=channels)
    return _on_loopback(
        loaded, config, ("telegram", bot.port), ("TELEGRAM_BOT_TOKEN", DEFAULT_TOKEN)
    )


def llm_workspace(
    tmp_path: Path,
    emulator: LlmEmulator,
    provider: str,
    api_key: str,
    mails: dict[str, bytes],
    *,
    llm: dict[str, object] | None = None,
    planner: PlannerConfig | None = None,
) -> LoadedConfig:
    """The demo workspace with ``mails`` (name -> raw) instead of its own, and the LLM
    gateway pointed at ``emulator`` in ``provider``'s API, its key stored encrypted."""
    loaded = load_config(build_workspace(tmp_path / "ws"))
    replace_mails(loaded, mails)
    base = emulator.base_url if provider == "anthropic" else emulator.openai_base_url
    settings = msgspec.convert(
        {"provider": provider, "base_url": base, "model": "test-model", **(llm or {})}, LlmConfig
    )
    config = msgspec.structs.replace(
        loaded.config, planner=planner or loaded.config.planner, llm=settings
    )
    return _on_loopback(loaded, config, ("llm", emulator.port), ("LLM_API_KEY", api_key))


def _on_loopback(
    loaded: LoadedConfig, config: Config, endpoint: tuple[str, int], secret: tuple[str, str]
) -> LoadedConfig:
    """``config`` with the connector of ``endpoint`` allowed to 127.0.0.1:port only, and
    ``secret`` (name, value) stored in a fresh encrypted secrets file."""
    (connector, port), (name, value) = endpoint, secret
    config = msgspec.structs.replace(
        config,
        egress=EgressConfig(
            allow=[EgressRule(connector=connector, host="127.0.0.1", port=port)],
            allow_private=["127.0.0.0/8"],
        ),
        secrets=msgspec.structs.replace(
            config.secrets, file="secrets.age", identity="keys/age.key"
        ),
    )
    result = LoadedConfig(config, loaded.base, loaded.path)
    init_secrets(config.secrets, result.resolve)
    set_secret(config.secrets, result.resolve, name, value)
    return result
