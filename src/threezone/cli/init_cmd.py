"""``threezone init [DIR]``: a working set-up in one step.

Writes ``threezone.toml`` (the channels asked for, their egress entries, an owner
list), a starter ``policy.d/``, an age identity (0600) and an empty encrypted secrets
file, then stores each channel's credentials with the same code as ``secrets set``.
Interactive on a terminal; ``--non-interactive`` takes everything from options, and
credentials from environment variables of the secrets' names (never from argv).
Nothing existing is overwritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from threezone.cli.common import fail
from threezone.errors import ConfigError, ThreezoneError

console = Console()

STARTER_POLICY = """\
# threezone starter policy. First matching rule wins; no match denies.
# Reference: docs/policy.md. Check it with `threezone policy check`.
# action               conditions                                         decision  limits

# Never answer a machine automatically (auto-replies, bulk and list mail): no mail loops.
email.*                trigger.automated=true                             deny
# Nothing goes to an address the untrusted message supplied when it was flagged.
*                      trigger.flagged=true origin(to)=content            deny
email.*                trigger.flagged=true                               deny

# Replies to contacts who authenticated, to an address that did not come from the mail.
email.reply            to=@contacts trigger.sender=@contacts origin(to)!=content  allow  rate=20/h
# Drafts for the owner are harmless.
email.draft            to=@owner                                          allow     rate=50/h
# New mail to a contact: ask the owner first.
email.send             to=@contacts                                       ask       rate=10/h

# Chat replies in the owner's own chats.
telegram.send_message  chat=@owner_chats trigger.channel=telegram         allow     rate=30/h
slack.post_message     channel=@owner_chats trigger.channel=slack         ask       rate=20/h

*                      *                                                  deny
"""


@dataclass(slots=True)
class Answers:
    """Everything ``init`` needs; filled from options, then from prompts."""

    owner: str = ""
    contacts: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    imap_host: str = ""
    smtp_host: str = ""
    email_user: str = ""
    authserv_id: str = ""
    telegram_owner_chat: int | None = None
    slack_channels: list[str] = field(default_factory=list)
    llm_provider: str = "none"
    llm_model: str = ""
    llm_base_url: str = ""
    backend: str = "sandbox"

    def secrets_needed(self) -> list[str]:
        needed: list[str] = []
        if "email" in self.channels:
            needed.append("EMAIL_PASSWORD")
        if "telegram" in self.channels:
            needed.append("TELEGRAM_BOT_TOKEN")
        if "slack" in self.channels:
            needed += ["SLACK_APP_TOKEN", "SLACK_BOT_TOKEN"]
        if self.llm_provider != "none":
            needed.append("LLM_API_KEY")
        return needed


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(text, ensure_ascii=False)


def _qlist(items: list[str]) -> str:
    return "[" + ", ".join(_q(item) for item in items) + "]"


def config_text(answers: Answers) -> str:
    """The ``threezone.toml`` for these answers (checked by loading it back in tests)."""
    allow: list[str] = []
    parts = [
        "# threezone configuration, written by `threezone init`. Reference: README.md.",
        "[executor]",
        'state_dir = "state"',
        f"backend = {_q(answers.backend)}",
        "",
        "[policy]",
        'dir = "policy.d"',
        "",
        "[secrets]",
        'file = "secrets.age"',
        'identity = "keys/age.key"',
        "",
        "[lists]",
        f"owner = {_qlist([answers.owner] if answers.owner else [])}",
        f"contacts = {_qlist(answers.contacts)}",
        f"owner_chats = {_qlist(_owner_chats(answers))}",
        "trusted_domains = []",
        "",
    ]
    if "email" in answers.channels:
        parts += _email_section(answers, allow)
    if "telegram" in answers.channels:
        parts += ["[channels.telegram]"]
        if answers.telegram_owner_chat is not None:
            chat = answers.telegram_owner_chat
            parts += [f"owner_chat = {chat}", f"allowed_chats = [{chat}]"]
        parts += [""]
        allow.append('{ connector = "telegram", host = "api.telegram.org", port = 443 }')
    if "slack" in answers.channels:
        parts += ["[channels.slack]", f"allowed_channels = {_qlist(answers.slack_channels)}", ""]
        allow += [
            '{ connector = "slack", host = "slack.com", port = 443 }',
            '{ connector = "slack", host = "*.slack.com", port = 443 }',
        ]
    if answers.llm_provider != "none":
        parts += _llm_section(answers, allow)
    parts += _planner_section(answers)
    parts += ["[egress]", "allow = [", *(f"  {entry}," for entry in allow), "]", ""]
    return "\n".join(parts)


def _planner_section(answers: Answers) -> list[str]:
    """The provider's model through the gateway when one is configured, else the local one."""
    kind = "llm" if answers.llm_provider != "none" else "local"
    return [
        "[planner]",
        f'kind = "{kind}"  # llm: [llm] through the executor; local: a model in the zone',
        "# The owner's standing instructions, shown to the model as trusted:",
        'instructions = "Answer known contacts briefly and politely."',
        "",
    ]


def _owner_chats(answers: Answers) -> list[str]:
    chats = [str(answers.telegram_owner_chat)] if answers.telegram_owner_chat is not None else []
    return chats + answers.slack_channels


def _email_section(answers: Answers, allow: list[str]) -> list[str]:
    allow += [
        f'{{ connector = "imap", host = {_q(answers.imap_host)}, port = 993 }}',
        f'{{ connector = "smtp", host = {_q(answers.smtp_host)}, port = 465 }}',
    ]
    return [
        "[channels.email]",
        'source = "imap"',
        f"account = {_q(answers.owner)}",
        f"authserv_id = {_q(answers.authserv_id)}",
        "",
        "[channels.email.imap]",
        f"host = {_q(answers.imap_host)}",
        f"username = {_q(answers.email_user)}",
        "",
        "[channels.email.smtp]",
        f"host = {_q(answers.smtp_host)}",
        f"username = {_q(answers.email_user)}",
        "",
    ]


_LLM_HOSTS = {"anthropic": "api.anthropic.com", "openai": "api.openai.com"}


def _llm_section(answers: Answers, allow: list[str]) -> list[str]:
    from urllib.parse import urlsplit

    host = urlsplit(answers.llm_base_url).hostname if answers.llm_base_url else None
    host = host or _LLM_HOSTS.get(answers.llm_provider, "")
    port = urlsplit(answers.llm_base_url).port if answers.llm_base_url else None
    allow.append(f'{{ connector = "llm", host = {_q(host)}, port = {port or 443} }}')
    lines = ["[llm]", f"provider = {_q(answers.llm_provider)}", f"model = {_q(answers.llm_model)}"]
    if answers.llm_base_url:
        lines.append(f"base_url = {_q(answers.llm_base_url)}")
    return [*lines, ""]


def write_setup(directory: Path, answers: Answers) -> Path:
    """Write config, policy, key and empty secrets; refuse to overwrite anything."""
    from threezone.config.load import load_config
    from threezone.executor.secrets import init_secrets

    config_path = directory / "threezone.toml"
    policy = directory / "policy.d" / "10-starter.policy"
    for path in (config_path, policy):
        if path.exists():
            raise ConfigError(str(path), "", "already exists; init never overwrites")
    directory.mkdir(parents=True, exist_ok=True)
    policy.parent.mkdir(exist_ok=True)
    policy.write_text(STARTER_POLICY)
    config_path.write_text(config_text(answers))
    loaded = load_config(config_path)  # what we wrote must load: fail here, not later
    init_secrets(loaded.config.secrets, loaded.resolve)
    return config_path


def store_credentials(config_path: Path, names: list[str], *, interactive: bool) -> list[str]:
    """Store each needed credential; returns the names still missing."""
    from threezone.config.load import load_config
    from threezone.executor.secrets import set_secret

    loaded = load_config(config_path)
    missing: list[str] = []
    for name in names:
        value = os.environ.get(name, "")
        if not value and interactive:
            question = f"{name} (hidden; empty to skip)"
            value = typer.prompt(question, default="", hide_input=True, show_default=False)
        if value:
            set_secret(loaded.config.secrets, loaded.resolve, name, value)
        else:
            missing.append(name)
    return missing


def init(  # noqa: PLR0917 - typer maps each option to one parameter
    directory: Annotated[Path, typer.Argument(help="Where to set up.")] = Path("."),
    non_interactive: Annotated[bool, typer.Option("--non-interactive")] = False,
    owner: Annotated[str, typer.Option(help="The owner's email address.")] = "",
    channel: Annotated[
        list[str] | None, typer.Option(help="email, telegram or slack (repeatable).")
    ] = None,
    imap_host: Annotated[str, typer.Option()] = "",
    smtp_host: Annotated[str, typer.Option()] = "",
    email_user: Annotated[str, typer.Option()] = "",
    authserv_id: Annotated[
        str, typer.Option(help="Your provider's Authentication-Results server name.")
    ] = "",
    telegram_owner_chat: Annotated[int | None, typer.Option()] = None,
    slack_channel: Annotated[list[str] | None, typer.Option()] = None,
    llm_provider: Annotated[str, typer.Option(help="none, anthropic or openai.")] = "none",
    llm_model: Annotated[str, typer.Option()] = "",
    llm_base_url: Annotated[str, typer.Option()] = "",
    backend: Annotated[str, typer.Option()] = "sandbox",
) -> None:
    """Set up threezone: config, starter policy, age key, encrypted secrets, credentials."""
    answers = Answers(
        owner=owner,
        channels=list(channel or []),
        imap_host=imap_host,
        smtp_host=smtp_host,
        email_user=email_user,
        authserv_id=authserv_id,
        telegram_owner_chat=telegram_owner_chat,
        slack_channels=list(slack_channel or []),
        llm_provider=llm_provider,
        llm_model=llm_model,
        llm_base_url=llm_base_url,
        backend=backend,
    )
    interactive = not non_interactive and console.is_terminal
    try:
        if interactive:
            _ask(answers)
        _check(answers)
        config_path = write_setup(directory, answers)
        missing = store_credentials(config_path, answers.secrets_needed(), interactive=interactive)
    except ThreezoneError as exc:
        raise fail(exc, 1) from exc
    console.print(f"wrote {config_path}, {directory / 'policy.d'}, keys/age.key, secrets.age")
    for name in missing:
        console.print(f"[yellow]still needed:[/] threezone secrets set {name} -c {config_path}")
    console.print("next: threezone policy check, then threezone run")


def _ask(answers: Answers) -> None:
    answers.owner = answers.owner or typer.prompt("Your email address (the owner)")
    if not answers.channels:
        chosen = typer.prompt("Channels (comma-separated: email, telegram, slack)", "email")
        answers.channels = [c.strip() for c in chosen.split(",") if c.strip()]
    if "email" in answers.channels:
        answers.imap_host = answers.imap_host or typer.prompt("IMAP server")
        answers.smtp_host = answers.smtp_host or typer.prompt("SMTP server")
        answers.email_user = answers.email_user or typer.prompt("Mail login", answers.owner)
        answers.authserv_id = answers.authserv_id or typer.prompt(
            "Authentication-Results server name (empty: never trust senders)", ""
        )
    if "telegram" in answers.channels and answers.telegram_owner_chat is None:
        answers.telegram_owner_chat = int(typer.prompt("Your Telegram chat id (for approvals)"))


def _check(answers: Answers) -> None:
    unknown = sorted(set(answers.channels) - {"email", "telegram", "slack"})
    if unknown:
        raise ConfigError("--channel", "", f"unknown channel(s): {', '.join(unknown)}")
    if "email" in answers.channels and not (answers.imap_host and answers.smtp_host):
        raise ConfigError("--imap-host/--smtp-host", "", "email needs both servers")
    if answers.llm_provider not in ("none", "anthropic", "openai"):
        raise ConfigError("--llm-provider", "", "expected none, anthropic or openai")
