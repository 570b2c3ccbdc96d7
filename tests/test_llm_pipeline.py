"""The planner zone asks for a completion; the executor adds the key and calls the provider.

Real sandboxed zones, the real gateway, the two-API emulator on loopback: the answer
comes back to the zone, and the key never does.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import msgspec
import pytest

from threezone.backends import get_backend
from threezone.config.load import LoadedConfig
from threezone.config.schema import LlmConfig
from threezone.demo import AUTHSERV_ID
from threezone.executor.core import Executor, Outcome
from threezone.testing import faulty_planner
from threezone.testing.llm_emulator import LlmEmulator
from threezone.testing.workspaces import llm_workspace

KEY = "sk-test-" + "k" * 40


def configured(tmp_path: Path, emulator: LlmEmulator, provider: str) -> LoadedConfig:
    message = EmailMessage()
    message["Authentication-Results"] = f"{AUTHSERV_ID}; dmarc=none"
    message["From"] = "someone@elsewhere.example"
    message["To"] = "owner@demo.example"
    message["Subject"] = "question"
    message.set_content("PLANNER-ASK-LLM What is the capital of France?")
    return llm_workspace(tmp_path, emulator, provider, KEY, {"1-question": bytes(message)})


def run(loaded: LoadedConfig) -> list[Outcome]:
    async def go() -> list[Outcome]:
        executor = Executor(
            loaded,
            get_backend(loaded.config.executor.backend),
            {"planner": faulty_planner.MODULE},
        )
        try:
            await executor.start()
            executor.ingest()
            return await executor.process_pending()
        finally:
            await executor.stop()

    return asyncio.run(go())


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_planner_zone_gets_a_completion_without_the_key(tmp_path: Path, provider: str) -> None:
    with LlmEmulator(api_key=KEY) as emulator:
        emulator.reply("Paris.")
        loaded = configured(tmp_path, emulator, provider)
        [outcome] = run(loaded)
        assert outcome.plan_summary == "llm: Paris."
        [request] = emulator.requests
        assert "What is the capital of France?" in msgspec.json.encode(request.body).decode()
    for path in loaded.base.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    audit = (loaded.base / "state" / "audit.jsonl").read_text()
    assert '"llm_call"' in audit


def test_without_a_provider_the_planner_is_told_llm_unavailable(tmp_path: Path) -> None:
    with LlmEmulator(api_key=KEY) as emulator:
        loaded = configured(tmp_path, emulator, "anthropic")
        config = msgspec.structs.replace(loaded.config, llm=LlmConfig())
        [outcome] = run(LoadedConfig(config, loaded.base, loaded.path))
        assert outcome.plan_summary == "llm_unavailable"
        assert emulator.requests == []
