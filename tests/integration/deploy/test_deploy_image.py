"""The image, checked without a container engine: the Dockerfile parsed by BuildKit's own parser (the
`dockerfile` package) and held to its promises (multi-stage, non-root, one entry point for every module),
then its build stage replayed here (same commands, paths mapped into a temporary folder), and the result
imported and run the way the deployments run it."""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import dockerfile
import pytest

from shared.infra.ports import free_port

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
IGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"
# Every module a deployment starts with `python -m` (compose.yaml, deploy/k8s).
MODULES = ("enqueuer", "sender", "dlr_ingest", "projector", "mitto_sim", "shared.topics_admin")

Stage = list[dockerfile.Command]


def stages() -> list[Stage]:
    out: list[Stage] = []
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(cmd)
    return out


def in_context(path: str) -> bool:
    """Whether the .dockerignore beside the Dockerfile lets `path` into the build context (last match wins)."""
    allowed = True
    for line in IGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.replace("/**", "")):
            allowed = negate
    return allowed


def test_image_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    build, runtime = stages()
    assert build[0].value[-2:] == ("AS", "build")
    runtime_cmds = [c.cmd for c in runtime]
    assert any(c.cmd == "COPY" and "--from=build" in c.flags for c in runtime)
    assert not any(c.cmd == "RUN" and "pip install" in c.value[0] for c in runtime), "tools in the runtime"
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert users, "the runtime stage never leaves root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert runtime_cmds.index("USER") > max(i for i, c in enumerate(runtime_cmds) if c in ("RUN", "COPY"))
    entrypoint = next(c for c in runtime if c.cmd == "ENTRYPOINT")
    assert entrypoint.json
    assert entrypoint.value == ("python", "-m")


def test_everything_copied_is_in_the_build_context() -> None:
    sources = [
        src
        for stage in stages()
        for c in stage
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
        for src in c.value[:-1]
    ]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert in_context(src), f"{src} is excluded by {IGNORE.name}"
    assert not in_context("tests/e2e/test_foundation.py")
    assert not in_context(".venv/bin/python")


def test_every_deployed_module_can_be_started_with_python_m() -> None:
    for module in MODULES:
        spec = importlib.util.find_spec(module)
        assert spec is not None, module
        if spec.submodule_search_locations:  # a package runs its __main__
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module


def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "healthcheck", REPO / "deploy" / "docker" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ready_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/readyz" else 503)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_container_healthcheck_follows_the_service_port(
    ready_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = _healthcheck()
    monkeypatch.setenv("HTTP_PORT", str(ready_server))
    assert check.main(["healthcheck.py"]) == 0
    assert check.main(["healthcheck.py", "/healthz"]) == 1  # answered, but not 200
    monkeypatch.setenv("HTTP_PORT", str(free_port()))
    assert check.main(["healthcheck.py"]) == 1  # nobody listening


@pytest.fixture(scope="module")
def built_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build stage replayed: COPY into the work dir, RUN with /opt/smsflow mapped to a temporary folder,
    `python` the base interpreter (the image's is a plain CPython 3.11)."""
    root = tmp_path_factory.mktemp("image")
    venv = root / "opt" / "smsflow"
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    build = stages()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", GIT_ALLOW_PROTOCOL="file")
    workdir = root
    for c in build:
        if c.cmd == "ENV":
            pairs = c.value
            env.update({pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)})
        elif c.cmd == "WORKDIR":
            workdir = root / c.value[0].lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif c.cmd == "COPY":
            *sources, dest = c.value
            for src in sources:
                target = workdir / dest / Path(src).name if dest.endswith("/") else workdir / dest
                if (REPO / src).is_dir():
                    shutil.copytree(
                        REPO / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                    )
                else:
                    shutil.copy2(REPO / src, target)
        elif c.cmd == "RUN":
            script = c.value[0].replace("/opt/smsflow", str(venv))
            done = subprocess.run(
                ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, (
                f"RUN {c.value[0][:80]}...\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
    return venv


def test_built_image_starts_every_module_and_ships_its_migrations(built_venv: Path, tmp_path: Path) -> None:
    python = built_venv / "bin" / "python"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1/none",
    }
    imports = "; ".join(f"import {m.split('.')[0]}" for m in MODULES)
    probe = (
        f"{imports}; import enqueuer.app, sender.app, dlr_ingest.app, projector.app, mitto_sim.app, shared.topics_admin; "
        "from shared.db import load_migrations; "
        "print(*(len(load_migrations(p)) for p in ('shared', 'enqueuer', 'sender', 'projector')))"
    )
    # Run outside the repository so that nothing is imported from the source tree.
    done = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    counts = [int(n) for n in done.stdout.split()]
    assert all(n >= 1 for n in counts), counts
    helped = subprocess.run(
        [python, "-m", "shared.topics_admin", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert helped.returncode == 0
    assert "--check" in helped.stdout
    dev_tools = [
        t for t in ("pytest", "ruff", "mypy", "kubernetes_validate") if (built_venv / "bin" / t).exists()
    ]
    assert not dev_tools, f"test and lint tools in the image: {dev_tools}"
