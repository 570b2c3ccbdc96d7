"""From a config to a running agent: which sources, actions, owner channel and LLM.

The one place that knows every connector. Each is built only when its
``[channels.*]`` section exists; credentials come from the secret store, and every
network connection goes through the executor's egress layer.
"""

from __future__ import annotations

from threezone.backends.base import Backend
from threezone.config.load import LoadedConfig
from threezone.connectors.base import ConnectorState, Source
from threezone.connectors.maildir import MaildirPoller
from threezone.executor.agent import Agent
from threezone.executor.core import Executor

STATE_FILE = "connectors.sqlite3"


def build_agent(loaded: LoadedConfig, backend: Backend) -> Agent:
    executor = Executor(loaded, backend)
    state = ConnectorState.open(executor.state_dir / STATE_FILE)
    sources: list[Source] = []
    if executor.source is not None:  # the Maildir of [channels.email] source = "maildir"
        executor.source.ensure()
        sources.append(MaildirPoller(executor.source))
    return Agent(executor, sources, state=state)
