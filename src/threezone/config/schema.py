"""The strict shape of ``threezone.toml``.

Unknown keys are errors (with their key path), every section has defaults, and paths
are relative to the directory holding the config file.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Seconds = Annotated[float, Meta(gt=0, le=3600)]
Bytes = Annotated[int, Meta(ge=1024, le=256 * 1024 * 1024)]
BackendName = Literal["sandbox", "unsafe-process"]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ExecutorConfig(_Section, frozen=True):
    state_dir: str = "state"
    backend: BackendName = "sandbox"
    hello_timeout: Seconds = 10.0
    request_timeout: Seconds = 30.0
    max_frame_bytes: Bytes = 4 * 1024 * 1024
    max_raw_bytes: Bytes = 25 * 1024 * 1024
    # Start each zone's successor ahead of need, so a zone that crashed or was killed is
    # replaced at once instead of after a cold start; costs one idle zone per role.
    spare_zones: bool = True
    restart_backoff: Annotated[list[Seconds], Meta(min_length=1, max_length=16)] = msgspec.field(
        default_factory=lambda: [0.1, 0.5, 2.0, 5.0]
    )


class PolicyConfig(_Section, frozen=True):
    dir: str = "policy.d"


class EmailChannelConfig(_Section, frozen=True):
    source: Literal["maildir"] = "maildir"
    maildir: str = "mail"
    outbox: str = "outbox"
    account: str = "owner@localhost"
    # The authserv-id of the provider whose Authentication-Results header we trust
    # (RFC 8601). Headers naming any other server are attacker-writable and ignored.
    authserv_id: str = ""


class ChannelsConfig(_Section, frozen=True):
    email: EmailChannelConfig | None = None


class PlannerConfig(_Section, frozen=True):
    kind: Literal["hijacked"] = "hijacked"


class Config(_Section, frozen=True):
    executor: ExecutorConfig = ExecutorConfig()
    policy: PolicyConfig = PolicyConfig()
    lists: dict[Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]*$")], list[str]] = msgspec.field(
        default_factory=dict
    )
    channels: ChannelsConfig = ChannelsConfig()
    planner: PlannerConfig = PlannerConfig()
