"""Static checks of compose.yaml: commands the CLI accepts, dependencies that exist, addresses
that name Compose services (there is no Docker engine to run `docker compose config`)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_support import REPO, parse_addresses, parse_cli

from orbilnot.cli import DEFAULT_PORTS, SERVICES
from orbilnot.infra.keycloak import API_AUDIENCE, DEMO_USERS, KEYCLOAK_VERSION, realm_definition
from orbilnot.migrations.roles import SERVICE_SCHEMAS, password_variable, role_of
from orbilnot.shared.config import ServiceSettings

COMPOSE_FILE = REPO / "compose.yaml"
ORBILNOT_IMAGE_PREFIX = "orbilnot:"
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, problems: list[str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, $$ with an empty environment: what
    `docker compose up` sees without a .env file. A variable without a default is a problem."""
    if isinstance(value, dict):
        return {k: interpolate(v, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, problems) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3)
        if operator in (":-", "-"):
            return default
        problems.append(f"${{{name}}} has no default, so a plain `docker compose up` gets an empty value")
        return ""

    return _VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    problems: list[str] = []
    # PyYAML resolves anchors and `<<` merge keys the way Compose does.
    document = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), problems)
    assert not problems, problems
    return document  # type: ignore[no-any-return]


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def orbilnot_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services(compose).items()
        if "build" in svc or str(svc.get("image", "")).startswith(ORBILNOT_IMAGE_PREFIX)
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def serve_role_and_port(service: dict[str, Any]) -> tuple[str, int] | None:
    args = parse_cli([str(a) for a in service["command"]])
    if args.command != "serve":
        return None
    return str(args.service), int(args.port or DEFAULT_PORTS[args.service])


def test_every_orbilnot_command_is_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    roles = {}
    for name, service in orbilnot_services(compose).items():
        command = service.get("command")
        assert isinstance(command, list), f"{name}: give the command in exec form (a list)"
        args = parse_cli([str(a) for a in command])
        roles[name] = args.command if args.command != "serve" else args.service
        if args.command == "serve":
            assert args.host == "0.0.0.0", f"{name} must listen on all interfaces in its container"
    assert sorted(roles.values()) == sorted([*SERVICES, "migrate"]), roles


def test_one_image_for_every_orbilnot_process(compose: dict[str, Any]) -> None:
    images = {svc.get("image") for svc in orbilnot_services(compose).values()}
    assert len(images) == 1, images
    for name, service in orbilnot_services(compose).items():
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context", ".")
        assert (REPO / context / "Dockerfile").is_file(), f"{name}: build context has no Dockerfile"


def test_depends_on_names_existing_services(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in all_services, f"{name} depends on {dependency}, which does not exist"
            assert dependency != name
            assert condition in DEPENDENCY_CONDITIONS, f"{name} -> {dependency}: unknown condition {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in all_services[dependency], f"{dependency} has no healthcheck to wait for"


def test_services_start_after_migration_and_healthy_infrastructure(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    postgres = next(n for n, s in all_services.items() if str(s.get("image", "")).startswith("postgres:"))
    kafka = next(n for n, s in all_services.items() if str(s.get("image", "")).startswith("apache/kafka:"))
    migrate = next(n for n, s in orbilnot_services(compose).items() if s["command"][0] == "migrate")
    assert all_services[migrate].get("restart", "no") == "no", "migrate is one-shot"
    assert depends_on(all_services[migrate]).get(postgres) == "service_healthy"
    for name, service in orbilnot_services(compose).items():
        if name == migrate:
            continue
        deps = depends_on(service)
        assert deps.get(postgres) == "service_healthy", name
        assert deps.get(kafka) == "service_healthy", name
        assert deps.get(migrate) == "service_completed_successfully", name


def test_infrastructure_images_and_health_checks(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    images = {str(s.get("image")) for s in all_services.values()}
    assert images & {"postgres:15", "postgres:16"}, images
    kafka_images = [i for i in images if i.startswith("apache/kafka:")]
    assert kafka_images and kafka_images[0].startswith("apache/kafka:4.1."), kafka_images
    for service in all_services.values():
        if str(service.get("image", "")).startswith(("postgres:", "apache/kafka:")):
            assert service.get("healthcheck", {}).get("test"), service["image"]


def test_kafka_is_one_combined_kraft_node(compose: dict[str, Any]) -> None:
    name, kafka = next(
        (n, s) for n, s in services(compose).items() if str(s.get("image", "")).startswith("apache/kafka:")
    )
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{21}[AQgw]", env["CLUSTER_ID"]), "CLUSTER_ID is a base64 UUID"
    for advertised in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        assert urlsplit(advertised).hostname == name, f"clients must be sent back to the {name} service"
    targets = [str(volume).split(":")[1] for volume in kafka.get("volumes", [])]
    assert env["KAFKA_LOG_DIRS"] in targets, "the log directory must be on a volume"


def test_service_addresses_name_compose_services(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    postgres = next(n for n, s in all_services.items() if str(s.get("image", "")).startswith("postgres:"))
    kafka = next(n for n, s in all_services.items() if str(s.get("image", "")).startswith("apache/kafka:"))
    kafka_env = environment(all_services[kafka])
    kafka_ports = {a.port for a in parse_addresses(kafka_env["KAFKA_ADVERTISED_LISTENERS"])}
    pg_env = environment(all_services[postgres])
    for name, service in orbilnot_services(compose).items():
        env = environment(service)
        if "DATABASE_URL" in env:
            url = urlsplit(env["DATABASE_URL"])
            assert url.scheme in ("postgresql", "postgres"), name
            assert (url.hostname, url.port) == (postgres, 5432), f"{name}: DATABASE_URL must name {postgres}"
            assert url.path.lstrip("/") == pg_env["POSTGRES_DB"], name
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            for address in parse_addresses(env["KAFKA_BOOTSTRAP_SERVERS"]):
                assert address.host == kafka and address.port in kafka_ports, f"{name}: {address}"


def test_each_service_connects_as_its_own_role_and_migrate_as_the_owner(compose: dict[str, Any]) -> None:
    """SPEC §9: the migration runs as the owner (POSTGRES_USER) and is given the services'
    passwords, which it sets on their roles; each service's DATABASE_URL names its own role with
    that same password; the gateway has no database at all."""
    all_services = services(compose)
    postgres = next(n for n, s in all_services.items() if str(s.get("image", "")).startswith("postgres:"))
    pg_env = environment(all_services[postgres])
    app = orbilnot_services(compose)
    migrate = next(svc for svc in app.values() if parse_cli(svc["command"]).command == "migrate")
    migrate_env = environment(migrate)
    owner = urlsplit(migrate_env["DATABASE_URL"])
    assert (owner.username, owner.password) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"])
    served = set()
    for name, service in app.items():
        args = parse_cli(service["command"])
        env = environment(service)
        if args.command != "serve":
            continue
        if args.service == "gateway":
            # No database credential; Kafka's (for the console's live feed) it may have.
            assert not any("DATABASE" in key or "PASSWORD" in key for key in env if not key.startswith("KAFKA_")), name
            continue
        served.add(args.service)
        url = urlsplit(env["DATABASE_URL"])
        assert url.username == role_of(args.service), f"{name} must connect as {role_of(args.service)}"
        assert url.password, f"{name}: no password"
        assert url.password == migrate_env[password_variable(args.service)], f"{name}: not the password migrate sets"
        assert url.password != pg_env["POSTGRES_PASSWORD"], name
    assert served == set(SERVICE_SCHEMAS)
    assert len({migrate_env[password_variable(s)] for s in SERVICE_SCHEMAS}) == 3, "one password per role"


def test_gateway_upstreams_name_the_services(compose: dict[str, Any]) -> None:
    app = orbilnot_services(compose)
    served = {name: serve_role_and_port(svc) for name, svc in app.items()}
    (gateway,) = [app[name] for name, role in served.items() if role and role[0] == "gateway"]
    env = environment(gateway)
    for upstream in ("billing", "order", "notification"):
        variable = f"{upstream.upper()}_URL"
        assert variable in env, f"the gateway needs {variable}"
        for address in parse_addresses(env[variable]):
            assert address.scheme in ("http", "https")
            assert address.host in app, f"{variable}: {address.host} is not a Compose service"
            assert served[address.host] == (upstream, address.port), (
                f"{variable}: {address.host}:{address.port} does not serve {upstream} on that port"
            )
    gateway_port = serve_role_and_port(gateway)
    assert gateway_port is not None
    published = [str(p).split(":")[-1] for p in gateway.get("ports", [])]
    assert str(gateway_port[1]) in published, f"the gateway's port {gateway_port[1]} is not published"


def test_health_checks_probe_the_served_port(compose: dict[str, Any]) -> None:
    for name, service in orbilnot_services(compose).items():
        role = serve_role_and_port(service)
        if role is None:
            continue
        test = " ".join(str(part) for part in service["healthcheck"]["test"])
        urls = re.findall(r"https?://[^'\" ]+", test)
        assert urls, f"{name}: the healthcheck requests no URL"
        for url in urls:
            parts = urlsplit(url)
            assert parts.port == role[1], f"{name}: healthcheck on {parts.port}, serves on {role[1]}"
            assert parts.path == "/health/ready", name


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    used = set()
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    assert len(used) >= 2, "PostgreSQL and Kafka keep their data in named volumes"


def test_kafka_client_settings_are_ones_the_services_read(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The KAFKA_* settings compose passes (issue 13: a secured Kafka in compose) are settings the
    services know, and their defaults make a valid PLAINTEXT configuration."""
    known = {name.upper() for name in ServiceSettings.model_fields}
    for name, service in orbilnot_services(compose).items():
        env = environment(service)
        if "KAFKA_BOOTSTRAP_SERVERS" not in env:
            continue
        client_settings = {key for key in env if key.startswith("KAFKA_")}
        assert client_settings <= known, f"{name}: {sorted(client_settings - known)} are read by nothing"
        assert {"KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE"} <= set(env)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = ServiceSettings()  # type: ignore[call-arg]
        assert settings.kafka_connection().security_protocol == "PLAINTEXT"
        assert settings.kafka_topic_min_insync_replicas is None


# ------------------------------------------------------------------------ authentication (issue 9)


def test_auth_is_off_by_default_and_configurable_in_every_process(compose: dict[str, Any]) -> None:
    for name, service in orbilnot_services(compose).items():
        if serve_role_and_port(service) is None:
            continue  # migrate serves no API
        env = environment(service)
        assert env["AUTH_MODE"] == "off", f"{name}: a plain `docker compose up` keeps the API open"
        assert {"OIDC_ISSUER_URL", "OIDC_AUDIENCE"} <= set(env), name
        assert env["OIDC_AUDIENCE"] == API_AUDIENCE, name


def test_keycloak_is_optional_and_imports_the_realm_of_infra_up_auth(compose: dict[str, Any]) -> None:
    keycloak = services(compose)["keycloak"]
    assert keycloak["profiles"] == ["auth"], "Keycloak starts only with --profile auth"
    assert keycloak["image"] == f"quay.io/keycloak/keycloak:{KEYCLOAK_VERSION}"
    for name, service in orbilnot_services(compose).items():
        assert "keycloak" not in depends_on(service), f"{name} must start without the optional profile"
    command = [str(part) for part in keycloak["command"]]
    assert command[0] == "start-dev" and "--import-realm" in command
    hostname = next(part.split("=", 1)[1] for part in command if part.startswith("--hostname="))
    port = next(int(part.split("=", 1)[1]) for part in command if part.startswith("--http-port="))
    assert urlsplit(hostname).hostname == "keycloak" and urlsplit(hostname).port == port, (
        "the issuer in the tokens must be the address the services reach Keycloak at"
    )
    assert any(str(p).split(":")[-1] == str(port) for p in keycloak["ports"])

    (mount,) = keycloak["volumes"]
    source, target, _ = str(mount).split(":")
    assert target == "/opt/keycloak/data/import"
    realm_file = REPO / source / "orbilnot-realm.json"
    env = environment(keycloak)
    placeholders = {user: f"${{ORBILNOT_{user.upper()}_PASSWORD}}" for user in DEMO_USERS}
    assert json.loads(realm_file.read_text()) == realm_definition(placeholders), (
        "deploy/keycloak/orbilnot-realm.json differs from the realm `orbilnot infra up --auth` imports"
    )
    for placeholder in placeholders.values():
        assert placeholder[2:-1] in env, f"{placeholder} is substituted from Keycloak's environment"
