"""Deployment files: docker-compose.yml, Procfile and deploy/ agree with each other and the code.

No container runs here (there is no Docker daemon on the test machines); these tests check
what can go stale silently: service names, healthchecks, files the compose file mounts, the
executables and ``ingest`` subcommands/options every command line names, the luigid config,
and that deploy/ingest.env.example is accepted by ``load_settings``.

Commands are checked in two layers: the executable must be a console script of this project
(``[project.scripts]`` in pyproject.toml) or of luigi; subcommands and ``--options`` are
checked against the click command tree of ``ingest.cli:main`` / ``backfill.cli:main``.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.settings import ENV_OVERRIDES, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROCFILE = ROOT / "Procfile"
DEPLOY = ROOT / "deploy"
#: The Dockerfile copies the repository to /app.
APP_DIR = "/app"

REQUIRED_SERVICES = {"kafka", "elasticsearch", "postgres", "schema-registry", "luigid", "ingest"}
#: Services that must have a healthcheck: everything another service or an operator waits on.
HEALTHCHECKED = REQUIRED_SERVICES


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _project_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert isinstance(scripts, dict)
    return scripts


def _luigi_scripts() -> set[str]:
    dist = importlib.metadata.distribution("luigi")
    return {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}


def _repo_path(container_path: str) -> Path:
    """The repository file behind a path inside the image (the repo is copied to /app)."""
    assert container_path.startswith(APP_DIR + "/"), container_path
    return ROOT / container_path.removeprefix(APP_DIR + "/")


def _dockerfile_instruction(name: str) -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    match = re.search(rf"^{name}\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, f"deploy/Dockerfile has no exec-form {name}"
    value = json.loads(match.group(1))
    assert isinstance(value, list)
    return value


def _procfile() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, command = line.partition(":")
        assert sep and re.fullmatch(r"[A-Za-z0-9_-]+", name), f"bad Procfile line: {line!r}"
        assert name not in entries, f"Procfile process {name!r} defined twice"
        entries[name] = command.strip()
    return entries


def _split_assignments(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``VAR=value`` words (as a shell runs them) and the command after them."""
    env: dict[str, str] = {}
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        key, _, value = argv[0].partition("=")
        env[key] = value
        argv = argv[1:]
    return env, argv


def _all_commands(*, click_only: bool = False) -> list[Any]:
    """Every command line the deployment runs, as (id, argv) params; ``click_only`` leaves
    out luigid (argparse, checked separately)."""
    params = []
    for name, svc in _services().items():
        if "command" in svc:
            command = svc["command"]
            argv = command if isinstance(command, list) else shlex.split(command)
            params.append(pytest.param([str(a) for a in argv], id=f"compose-{name}"))
    params.append(pytest.param(_dockerfile_instruction("CMD"), id="dockerfile-cmd"))
    for name, line in _procfile().items():
        _, argv = _split_assignments(shlex.split(line))
        params.append(pytest.param(argv, id=f"procfile-{name}"))
    if click_only:
        params = [p for p in params if p.values[0][0] != "luigid"]
    return params


# -- compose structure ---------------------------------------------------------------------


def test_required_services_exist() -> None:
    """Kafka, Elasticsearch, PostgreSQL, the schema registry, luigid and the ingester exist."""
    assert set(_services()) >= REQUIRED_SERVICES


@pytest.mark.parametrize(
    ("service", "image_prefix"),
    [
        pytest.param("kafka", "apache/kafka:", id="kafka"),
        pytest.param("elasticsearch", "docker.elastic.co/elasticsearch/elasticsearch:9.", id="es"),
        pytest.param("postgres", "postgres:17", id="postgres"),
        pytest.param("schema-registry", "confluentinc/cp-schema-registry:", id="registry"),
    ],
)
def test_backing_service_images(service: str, image_prefix: str) -> None:
    """Backing services use the intended official images, with a pinned tag."""
    image = _services()[service]["image"]
    assert image.startswith(image_prefix)
    assert not image.endswith(":latest")


def test_every_service_has_image_or_build() -> None:
    """Each service can be started: it names an image or a build whose Dockerfile exists."""
    for name, svc in _services().items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            build = svc["build"]
            context = ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name


def test_app_services_build_from_deploy_dockerfile() -> None:
    """luigid and the ingester run the project's image built from deploy/Dockerfile."""
    for name in ("luigid", "ingest"):
        assert _services()[name]["build"]["dockerfile"] == "deploy/Dockerfile"


@pytest.mark.parametrize("service", sorted(HEALTHCHECKED))
def test_healthchecks(service: str) -> None:
    """Services others wait on have a healthcheck with a test and bounded timing."""
    check = _services()[service].get("healthcheck")
    assert check, f"{service} has no healthcheck"
    assert check["test"][0] in {"CMD", "CMD-SHELL"}
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{service} healthcheck lacks {key}"


def test_depends_on_names_real_services_with_valid_conditions() -> None:
    """depends_on only names services that exist; service_healthy targets have a healthcheck."""
    services = _services()
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        items = deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)
        for dep, spec in items:
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name
            condition = (spec or {}).get("condition", "service_started")
            assert condition in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep} without a check"


def test_ingester_waits_for_every_backend() -> None:
    """The ingester starts only once Kafka, registry, search and PostgreSQL are healthy."""
    deps = _services()["ingest"]["depends_on"]
    for dep in ("kafka", "schema-registry", "elasticsearch", "postgres"):
        assert deps[dep]["condition"] == "service_healthy"
    assert _services()["luigid"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_published_ports_bind_loopback_only() -> None:
    """Every published port is bound to 127.0.0.1, never to all interfaces."""
    for name, svc in _services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"


def test_elasticsearch_security_off_with_instructions() -> None:
    """Security is off for local use, and the file says how to turn it on."""
    es = _services()["elasticsearch"]["environment"]
    assert es["xpack.security.enabled"] == "false"
    assert es["discovery.type"] == "single-node"
    text = COMPOSE.read_text()
    assert "To enable it" in text and "INGEST_SEARCH_PASSWORD_FILE" in text


def test_kafka_is_kraft_single_node() -> None:
    """Kafka runs KRaft (broker+controller, no ZooKeeper) and advertises an in-network name."""
    env = _services()["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in " ".join(env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    registry = _services()["schema-registry"]["environment"]
    assert registry["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"] == "PLAINTEXT://kafka:9092"


# -- files the compose file references ----------------------------------------------------


def test_bind_mounted_paths_exist() -> None:
    """Every host path mounted into a container exists in the repository."""
    for name, svc in _services().items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_env_files() -> None:
    """Required env files exist; optional ones are git-ignored local overrides."""
    for name, svc in _services().items():
        for entry in svc.get("env_file", []):
            spec = {"path": entry, "required": True} if isinstance(entry, str) else entry
            path = ROOT / spec["path"]
            if spec.get("required", True):
                assert path.is_file(), f"{name}: missing env file {spec['path']}"
            else:
                assert _git_ignored(path), f"{name}: optional {spec['path']} is not ignored"


def test_secrets_are_defined_ignored_and_made_by_the_script(tmp_path: Path) -> None:
    """Secrets used by services are declared, live in deploy/secrets (git-ignored), and
    deploy/make-secrets.sh creates exactly those files."""
    compose = _compose()
    declared = compose["secrets"]
    for name, svc in compose["services"].items():
        for secret in svc.get("secrets", []):
            key = secret if isinstance(secret, str) else secret["source"]
            assert key in declared, f"{name} uses undeclared secret {key!r}"
    files = {Path(spec["file"]).name for spec in declared.values()}
    for spec in declared.values():
        path = ROOT / spec["file"]
        assert path.parent == DEPLOY / "secrets"
        assert _git_ignored(path), f"{spec['file']} would be committed"

    subprocess.run(
        ["sh", str(DEPLOY / "make-secrets.sh"), str(tmp_path / "s")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    made = {p.name for p in (tmp_path / "s").iterdir()}
    assert made == files
    password = (tmp_path / "s" / "postgres_password").read_text().strip()
    assert len(password) >= 24
    pg = compose["services"]["postgres"]["environment"]
    dsn = (tmp_path / "s" / "ledger_dsn").read_text().strip()
    assert dsn == f"postgresql://{pg['POSTGRES_USER']}:{password}@postgres:5432/{pg['POSTGRES_DB']}"
    # readable by the containers' non-root users, guarded by the directory on the host
    assert (tmp_path / "s" / "ledger_dsn").stat().st_mode & stat.S_IROTH
    assert not (tmp_path / "s").stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)


def test_make_secrets_never_rotates(tmp_path: Path) -> None:
    """A second run keeps existing files, so a live database keeps its password."""
    script = str(DEPLOY / "make-secrets.sh")
    subprocess.run(["sh", script, str(tmp_path)], check=True, capture_output=True, timeout=30)
    first = (tmp_path / "postgres_password").read_text()
    subprocess.run(["sh", script, str(tmp_path)], check=True, capture_output=True, timeout=30)
    assert (tmp_path / "postgres_password").read_text() == first


def _git_ignored(path: Path) -> bool:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", str(path)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def test_shell_scripts_parse_and_are_executable() -> None:
    """deploy/*.sh are valid POSIX sh and executable (the image runs the entrypoint)."""
    for script in DEPLOY.glob("*.sh"):
        subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_entrypoint_turns_password_file_into_env(tmp_path: Path) -> None:
    """The entrypoint exports PGPASSWORD from PGPASSWORD_FILE and hides the file variable."""
    secret = tmp_path / "pw"
    secret.write_text("pw-123\n")
    env = {"PATH": os.environ["PATH"], "PGPASSWORD_FILE": str(secret)}
    out = subprocess.run(
        [
            str(DEPLOY / "docker-entrypoint.sh"),
            "sh",
            "-c",
            'echo "$PGPASSWORD|${PGPASSWORD_FILE-}"',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout == "pw-123|\n"
    env["PGPASSWORD_FILE"] = str(tmp_path / "missing")
    bad = subprocess.run(
        [str(DEPLOY / "docker-entrypoint.sh"), "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 1
    assert "cannot read PGPASSWORD_FILE" in bad.stderr


def test_dockerfile() -> None:
    """The image is python:3.11-slim, installs the project's wheel built with its native
    transcoder (the build fails without it), runs the entrypoint as non-root."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.MULTILINE)
    assert re.search(r"^FROM python:3\.11-slim AS build$", text, re.MULTILINE)
    assert re.search(r"apt-get install .*\bgcc\b", text)
    assert re.search(r"pip wheel .*--wheel-dir /wheels /src", text)
    assert re.search(r"COPY --from=build /wheels /wheels", text)
    assert re.search(r"pip install /wheels/\*\.whl", text)
    assert 'python -c "import ingest.avro._transcode"' in text
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    entrypoint = _dockerfile_instruction("ENTRYPOINT")
    assert _repo_path(entrypoint[0]).is_file()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for excluded in (".git", ".venv", "deploy/secrets"):
        assert excluded in ignore


# -- luigid and its configuration ---------------------------------------------------------


def _luigi_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string((DEPLOY / "luigi.cfg").read_text())
    return cfg


def test_luigi_cfg_records_history_in_postgres() -> None:
    """luigi.cfg turns task history on and stores it with SQLAlchemy + psycopg 3."""
    cfg = _luigi_cfg()
    assert cfg.getboolean("scheduler", "record_task_history") is True
    url = cfg.get("task_history", "db_connection")
    assert url.startswith("postgresql+psycopg://")
    assert "@" not in url, "no credentials in the config file: libpq env provides them"


def test_luigid_service_is_wired_to_the_config_and_database() -> None:
    """luigid reads deploy/luigi.cfg and its libpq env names the database postgres creates."""
    svc = _services()["luigid"]
    env = svc["environment"]
    assert _repo_path(env["LUIGI_CONFIG_PATH"]) == DEPLOY / "luigi.cfg"
    assert env["PGHOST"] == "postgres"
    assert env["PGUSER"] == _services()["postgres"]["environment"]["POSTGRES_USER"]
    assert env["PGPASSWORD_FILE"] == "/run/secrets/postgres_password"
    init_sql = "".join(p.read_text() for p in (DEPLOY / "postgres-init").glob("*.sql"))
    assert f"CREATE DATABASE {env['PGDATABASE']};" in init_sql
    assert svc["command"][:3] == ["luigid", "--port", "8082"]


def test_procfile_luigid_uses_the_config() -> None:
    """The Procfile's luigid sets LUIGI_CONFIG_PATH to deploy/luigi.cfg."""
    env, argv = _split_assignments(shlex.split(_procfile()["luigid"]))
    assert (ROOT / env["LUIGI_CONFIG_PATH"]) == DEPLOY / "luigi.cfg"
    assert argv[:3] == ["luigid", "--port", "8082"]
    assert _procfile()["daemon"].startswith("ingest run --config ingest.toml --metrics-port 9108")


# -- commands: executables, subcommands and options ----------------------------------------

#: luigid's own options (luigi/cmdline.py, argparse): checked here since it is not click.
LUIGID_OPTIONS = {
    "--background",
    "--pidfile",
    "--logdir",
    "--state-path",
    "--address",
    "--unix-socket",
    "--port",
}


@pytest.mark.parametrize("argv", _all_commands())
def test_commands_name_known_executables(argv: list[str]) -> None:
    """Every command starts with a console script of this project or luigid."""
    exe = argv[0]
    if exe == "luigid":
        assert "luigid" in _luigi_scripts()
        opts = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")}
        assert opts <= LUIGID_OPTIONS, opts - LUIGID_OPTIONS
    else:
        assert exe in _project_scripts(), f"{exe!r} is not in [project.scripts]"


def _click_problems(argv: list[str]) -> list[str]:
    """Walk the click command tree along ``argv``; unknown subcommands and options."""
    import click

    target = _project_scripts()[argv[0]]
    module_name, _, attr = target.partition(":")
    command = getattr(importlib.import_module(module_name), attr)
    assert isinstance(command, click.Command), f"{target} is not a click command"
    problems: list[str] = []
    ctx = click.Context(command)
    path = argv[0]
    tokens = iter(argv[1:])
    for token in tokens:
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            option = next(
                (p for p in command.get_params(ctx) if name in p.opts or name in p.secondary_opts),
                None,
            )
            if option is None:
                problems.append(f"{path}: unknown option {name}")
            elif "=" not in token and not getattr(option, "is_flag", False):
                next(tokens, None)  # the option's value
        elif isinstance(command, click.Group):
            sub = command.get_command(ctx, token)
            if sub is None:
                problems.append(f"{path}: unknown subcommand {token!r}")
                break
            command, path = sub, f"{path} {token}"
            ctx = click.Context(command, parent=ctx)
    return problems


@pytest.mark.parametrize("argv", _all_commands(click_only=True))
def test_commands_use_existing_subcommands_and_options(argv: list[str]) -> None:
    """ingest/backfill subcommands and --options in every command exist in the click CLI."""
    assert _click_problems(argv) == []


# -- the ingester's environment -----------------------------------------------------------


def _env_example() -> tuple[dict[str, str], set[str]]:
    """(active assignments, every INGEST_* name mentioned, commented or not)."""
    text = (DEPLOY / "ingest.env.example").read_text()
    active: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"bad env line {line!r}"
            active[key.strip()] = value.strip()
    mentioned = set(re.findall(r"\b(INGEST_[A-Z0-9_]+)=", text))
    return active, mentioned


def test_env_example_names_only_known_variables() -> None:
    """Every INGEST_* variable in the example (even commented) is one settings reads."""
    known = set(ENV_OVERRIDES) | {f"{k}_FILE" for k in ENV_OVERRIDES} | {"INGEST_CONFIG"}
    active, mentioned = _env_example()
    assert mentioned, "the example mentions no INGEST_ variable"
    assert mentioned <= known, mentioned - known
    assert set(active) <= known


def test_env_example_keeps_secrets_in_files() -> None:
    """Secret-bearing variables appear only in their *_FILE form, pointing at compose secrets."""
    active, mentioned = _env_example()
    secret_like = re.compile(r"PASSWORD|API_KEY|TOKEN|_DSN$")
    for name in mentioned:
        if secret_like.search(name):
            assert name.endswith("_FILE"), f"{name} should be given as {name}_FILE"
    for name, value in active.items():
        if name.endswith("_FILE"):
            assert value.startswith("/run/secrets/")


def test_env_example_loads_with_the_repo_config(tmp_path: Path) -> None:
    """ingest.toml + the example env (secret files stubbed) is a valid Settings."""
    active, _ = _env_example()
    env = dict(active)
    for name, value in active.items():
        if value.startswith("/run/secrets/"):
            stub = tmp_path / Path(value).name
            stub.write_text("postgresql://ingest:pw@postgres:5432/ingest\n")
            env[name] = str(stub)
    settings = load_settings(ROOT / "ingest.toml", env=env)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.search.url == "http://elasticsearch:9200"
    assert settings.ledger.dsn.get_secret_value().startswith("postgresql://ingest:pw@postgres")
    assert settings.schema_registry.url == "http://schema-registry:8081"
    assert settings.streams, "the repo config defines at least one stream"


def test_ingest_service_env_points_at_compose_services() -> None:
    """Hosts named in the example env are services of the compose file."""
    active, _ = _env_example()
    services = set(_services())
    for name in (
        "INGEST_KAFKA_BOOTSTRAP_SERVERS",
        "INGEST_SEARCH_URL",
        "INGEST_SCHEMA_REGISTRY_URL",
    ):
        host = re.sub(r"^\w+://", "", active[name]).split(":", 1)[0]
        assert host in services, f"{name} names {host!r}, not a compose service"
    secret_path = Path(active["INGEST_LEDGER_DSN_FILE"])
    assert secret_path.name in _services()["ingest"]["secrets"]
