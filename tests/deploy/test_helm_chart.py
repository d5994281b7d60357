"""Static checks of the Helm chart in helm/: lint, render, Kubernetes schemas and the
cross-references between rendered objects (SPEC §8, issue 3)."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable

import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    ALL_OPTIONS,
    CHART,
    CUSTOM,
    DEFAULT,
    EXTERNAL,
    EXTERNAL_SECURED,
    EXTERNAL_VALUES,
    Address,
    Mode,
    Rendered,
    all_containers,
    container_port_numbers,
    containers,
    expected_image,
    orbilnot_argv,
    parse_addresses,
    parse_cli,
    pod_spec,
    pod_template,
    resolve_env,
    run_helm,
    workload_role,
)

from orbilnot.cli import SERVICES
from orbilnot.migrations.roles import SERVICE_SCHEMAS, password_variable, role_of

APP_SERVICES = ("billing", "order", "notification")

# Environment variables that hold addresses, and which workload (by role) each must lead to.
ADDRESS_VARS = {
    "DATABASE_URL": "postgresql",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka",
    "KAFKA_ADVERTISED_LISTENERS": "kafka",
    "BILLING_URL": "billing",
    "ORDER_URL": "order",
    "NOTIFICATION_URL": "notification",
}
# Parts of DATABASE_URL (composed from them with $(VAR) expansion), checked through DATABASE_URL.
ADDRESS_PARTS = {"DATABASE_HOST", "DATABASE_PORT"}
# Loopback-only addresses inside one pod, checked by test_kafka_statefulset.
LOCAL_ADDRESS_VARS = {"KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LISTENERS"}
ADDRESS_LIKE_SUFFIXES = ("_URL", "_URLS", "_HOST", "_SERVERS", "_LISTENERS", "_VOTERS", "_ADDRESS")


def external_values() -> dict[str, dict[str, object]]:
    return yaml.safe_load(EXTERNAL_VALUES.read_text())  # type: ignore[no-any-return]


def fullname(mode: Mode) -> str:
    return mode.release if "orbilnot" in mode.release else f"{mode.release}-orbilnot"


# ------------------------------------------------------------------------------ lint and render


@pytest.mark.parametrize("mode", [DEFAULT, EXTERNAL, EXTERNAL_SECURED, ALL_OPTIONS], ids=lambda m: m.name)
def test_helm_lint_strict(helm: str, mode: Mode) -> None:
    args = ["lint", "--strict", str(CHART)]
    for path in mode.values_files:
        args += ["--values", str(path)]
    for item in mode.set_values:
        args += ["--set", item]
    proc = run_helm(helm, *args)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"helm lint --strict ({mode.name}) failed:\n{output}"
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_default_values_render_the_whole_system(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(DEFAULT)
    name = fullname(DEFAULT)
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects}

    assert len(rendered.of_kind("Job")) == 1, "one migration Job"
    assert {("StatefulSet", f"{name}-postgresql"), ("StatefulSet", f"{name}-kafka")} <= kinds
    deployments = {obj["metadata"]["name"] for obj in rendered.of_kind("Deployment")}
    assert deployments == {f"{name}-{service}" for service in SERVICES}
    for component in (*SERVICES, "postgresql", "kafka"):
        assert ("Service", f"{name}-{component}") in kinds, f"no Service for {component}"
    assert ("Secret", f"{name}-postgresql") in kinds

    ingress = rendered.named("Ingress", f"{name}-gateway")
    assert ingress is not None, "the Ingress is on by default"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["arch.homework"]


def test_services_run_two_replicas_by_default(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(DEFAULT)
    for service in APP_SERVICES:
        deployment = rendered.named("Deployment", f"{fullname(DEFAULT)}-{service}")
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 2, service


def test_every_object_is_labelled_for_the_release(rendered: Rendered) -> None:
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == rendered.mode.release, obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", obj["metadata"]["name"]


# ------------------------------------------------------------------------- Kubernetes schemas


# The oldest Kubernetes minor the chart claims (README, "Deploy") and the newest schemas bundled
# with kubernetes-validate.
SCHEMA_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


@pytest.mark.parametrize("k8s_version", SCHEMA_VERSIONS)
def test_manifests_are_valid_kubernetes_objects(rendered: Rendered, k8s_version: str) -> None:
    errors = []
    for obj in rendered.objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's kinds, which these schemas lack: test_monitoring.py
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {str(exc).splitlines()[0]}")
    assert not errors, "\n".join(errors)


def test_strict_schema_validation_is_not_vacuous(render: Callable[[Mode], Rendered]) -> None:
    """The validator really rejects what a typo in a template would produce."""
    deployment = copy.deepcopy(render(DEFAULT).of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


# --------------------------------------------------------------------- migrations and images


def test_every_service_pod_waits_for_migrations(rendered: Rendered) -> None:
    by_role = {workload_role(w): w for w in rendered.workloads()}
    for service in APP_SERVICES:
        deployment = by_role[service]
        assert deployment["kind"] == "Deployment"
        init = pod_spec(deployment).get("initContainers", [])
        waits = [c for c in init if (argv := orbilnot_argv(c)) is not None and _is_migrate_wait(argv)]
        assert waits, f"{service}: no initContainer running `orbilnot migrate --wait`"
        main = pod_spec(deployment)["containers"][0]
        # The wait must look at the same database the service will use.
        wait_env, main_env = resolve_env(rendered, waits[0]), resolve_env(rendered, main)
        assert wait_env.values["DATABASE_URL"].split("@")[-1] == main_env.values["DATABASE_URL"].split("@")[-1]
        assert set(wait_env.secrets.values()) <= set(main_env.secrets.values())
    # Any other pod that talks to the database is the migration Job itself.
    for workload in rendered.workloads():
        role = workload_role(workload)
        uses_db = any("DATABASE_URL" in resolve_env(rendered, c).values for c in containers(workload, init=False))
        if uses_db and role not in APP_SERVICES:
            assert role == "migrate", f"{workload['metadata']['name']} uses the database without waiting"


def _is_migrate_wait(argv: list[str]) -> bool:
    args = parse_cli(argv)
    return bool(args.command == "migrate" and args.wait)


def test_migration_job_is_a_plain_retrying_job(rendered: Rendered) -> None:
    (job,) = rendered.of_kind("Job")
    annotations = job["metadata"].get("annotations") or {}
    assert "helm.sh/hook" not in annotations, "a pre-install hook would run before the bundled database exists"
    (container,) = pod_spec(job)["containers"]
    argv = orbilnot_argv(container)
    assert argv is not None
    args = parse_cli(argv)
    assert args.command == "migrate" and not args.wait
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    # Exponential backoff from 10 s: 8 retries already span over 20 minutes of database start-up.
    assert job["spec"].get("backoffLimit", 6) >= 8
    assert "activeDeadlineSeconds" not in job["spec"] or job["spec"]["activeDeadlineSeconds"] >= 1200


def test_job_and_deployments_use_one_image(rendered: Rendered) -> None:
    values = rendered.mode.values()
    expected = expected_image(values, values["image"], _app_version())
    images = {}
    for workload, container in all_containers(rendered):
        if workload["kind"] in ("Job", "Deployment"):
            images[f"{workload['metadata']['name']}/{container['name']}"] = container["image"]
    assert images, "no Job or Deployment rendered"
    assert set(images.values()) == {expected}, images


def _app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def test_container_commands_are_accepted_by_the_cli(rendered: Rendered) -> None:
    seen_services = set()
    for workload, container in all_containers(rendered):
        if workload["kind"] == "StatefulSet":
            continue  # PostgreSQL and Kafka run their images' own entrypoints
        argv = orbilnot_argv(container)
        assert argv is not None, f"{workload['metadata']['name']}/{container['name']} does not run `orbilnot`"
        args = parse_cli(argv)
        if args.command == "serve":
            seen_services.add(args.service)
            assert args.host == "0.0.0.0", f"{args.service} must listen on all interfaces in a pod"
            ports = container_port_numbers(container)
            assert args.port is not None and args.port == ports.get("http"), (
                f"{args.service}: serves on {args.port}, its container port 'http' is {ports.get('http')}"
            )
    assert seen_services == set(SERVICES)


# ------------------------------------------------------------------------------------- probes


def test_probes_target_container_ports(rendered: Rendered) -> None:
    for workload, container in all_containers(rendered):
        where = f"{workload['metadata']['name']}/{container['name']}"
        ports = container_port_numbers(container)
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if not probe:
                continue
            for handler in ("httpGet", "tcpSocket", "grpc"):
                if handler in probe:
                    port = probe[handler]["port"]
                    assert port in ports, f"{where}: {kind} uses port {port!r}, container ports are {ports}"


def test_orbilnot_processes_have_health_probes(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        if workload["kind"] != "Deployment":
            continue
        (container,) = pod_spec(workload)["containers"]
        where = workload["metadata"]["name"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live", where
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready", where


def test_every_container_declares_resources(rendered: Rendered) -> None:
    for workload, container in all_containers(rendered):
        resources = container.get("resources") or {}
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
        assert "memory" in resources.get("limits", {}), where


# -------------------------------------------------------------------------- cross-references


def test_services_select_one_workload_and_its_ports(rendered: Rendered) -> None:
    for service in rendered.of_kind("Service"):
        name = service["metadata"]["name"]
        selected = rendered.selected_workloads(service)
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        ports: dict[str | int, int] = {}
        for container in containers(selected[0], init=False):
            ports.update(container_port_numbers(container))
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports, f"Service {name}: targetPort {target!r} is not a container port {ports}"


def test_statefulsets_are_governed_by_headless_services(rendered: Rendered) -> None:
    for statefulset in rendered.of_kind("StatefulSet"):
        governing = rendered.named("Service", statefulset["spec"]["serviceName"])
        assert governing is not None, f"{statefulset['metadata']['name']}: serviceName names no Service"
        assert governing["spec"].get("clusterIP") == "None"
        assert rendered.selected_workloads(governing) == [statefulset]


def test_ingress_routes_to_the_gateway_service(rendered: Rendered) -> None:
    for ingress in rendered.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = rendered.named("Service", backend["name"])
                assert service is not None, f"Ingress backend {backend['name']} is not rendered"
                port_names = {p.get("name") for p in service["spec"]["ports"]} | {
                    p["port"] for p in service["spec"]["ports"]
                }
                assert backend["port"].get("name", backend["port"].get("number")) in port_names
                (workload,) = rendered.selected_workloads(service)
                assert workload_role(workload) == "gateway"


def test_env_references_resolve(rendered: Rendered) -> None:
    """envFrom ConfigMaps exist, every $(VAR) resolves, secretKeyRefs name a rendered Secret and
    key (or, with an external database, the configured existing Secret)."""
    values = rendered.mode.values()
    for workload, container in all_containers(rendered):
        where = f"{workload['metadata']['name']}/{container['name']}"
        env = resolve_env(rendered, container)
        assert not env.problems, f"{where}: {env.problems}"
        for secret_name, key in env.secrets.values():
            secret = rendered.named("Secret", secret_name)
            if secret is not None:
                assert key in secret.get("data", {}) or key in secret.get("stringData", {}), (
                    f"{where}: Secret {secret_name} has no key {key}"
                )
            else:
                # Not rendered: it must be an operator's own Secret the values name.
                source = values["postgresql"] if values["postgresql"]["enabled"] else values["externalDatabase"]
                sasl = values["externalKafka"]["sasl"]
                named = {
                    (source["existingSecret"], k)
                    for k in (source["existingSecretPasswordKey"], *SERVICE_PASSWORD_KEYS.values())
                }
                named.add((sasl["existingSecret"], sasl["existingSecretPasswordKey"]))
                assert (secret_name, key) in named, f"{where}: Secret {secret_name}/{key} is not rendered"


def test_env_addresses_name_rendered_services_or_external_values(rendered: Rendered) -> None:
    values = rendered.mode.values()
    external: set[Address] = set()
    if not values["postgresql"]["enabled"]:
        db = values["externalDatabase"]
        external.add(Address(db["host"], int(db["port"])))
    if not values["kafka"]["enabled"]:
        external.update(parse_addresses(values["externalKafka"]["bootstrapServers"]))

    checked = set()
    for workload, container in all_containers(rendered):
        where = f"{workload['metadata']['name']}/{container['name']}"
        env = resolve_env(rendered, container)
        for name, value in env.values.items():
            if name not in ADDRESS_VARS:
                assert not name.endswith(ADDRESS_LIKE_SUFFIXES) or name in ADDRESS_PARTS | LOCAL_ADDRESS_VARS, (
                    f"{where}: {name} looks like an address but no test checks it; add it to ADDRESS_VARS"
                )
                continue
            checked.add(name)
            for address in parse_addresses(value):
                if Address(address.host, address.port) in external:
                    continue
                service = rendered.service(address.host)
                assert service is not None, f"{where}: {name}={value!r}: {address.host} is no rendered Service"
                assert address.port in {p["port"] for p in service["spec"]["ports"]}, (
                    f"{where}: {name}: Service {address.host} has no port {address.port}"
                )
                (target,) = rendered.selected_workloads(service)
                assert workload_role(target) == ADDRESS_VARS[name], (
                    f"{where}: {name} leads to {target['metadata']['name']}, not to {ADDRESS_VARS[name]}"
                )
    expected = {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "BILLING_URL", "ORDER_URL", "NOTIFICATION_URL"}
    if values["kafka"]["enabled"]:
        expected.add("KAFKA_ADVERTISED_LISTENERS")
    assert checked == expected, f"address variables found: {sorted(checked)}"


SERVICE_PASSWORD_KEYS = {service: f"{service}-password" for service in SERVICE_SCHEMAS}


def test_database_credentials_come_from_the_secret_outside_the_url(rendered: Rendered) -> None:
    """SPEC §9: the migration Job connects as the owner and is given every service's password
    (which `orbilnot migrate` sets on the service roles); each service pod, its wait included,
    connects as its own role with that same password; every password comes from the Secret.
    Issue 13: no password is pasted into DATABASE_URL (where `@` or `/` in it would break the
    URL): DATABASE_PASSWORD carries it and the application encodes it."""
    values = rendered.mode.values()
    db = values["postgresql"] if values["postgresql"]["enabled"] else values["externalDatabase"]
    owner_key = db["existingSecretPasswordKey"] if db.get("existingSecret") else "password"
    roles_seen = set()
    for workload, container in all_containers(rendered):
        env = resolve_env(rendered, container)
        if "DATABASE_URL" not in env.values:
            continue
        where = f"{workload['metadata']['name']}/{container['name']}"
        url = env.values["DATABASE_URL"]
        assert url.startswith("postgresql://"), url
        credentials = url.removeprefix("postgresql://").split("@")[0]
        assert ":" not in credentials, f"{where}: a password inside DATABASE_URL: {url}"
        user = credentials
        password = env.values.get("DATABASE_PASSWORD", "")
        assert password in env.secrets, f"{where}: DATABASE_PASSWORD is not from a Secret"
        assert url.split("/")[-1].split("?")[0] == db["database"]
        role = workload_role(workload)
        if role == "migrate":
            assert user == db["username"], f"{where}: migrations run as the owner"
            assert env.secrets[password][1] == owner_key, where
            for service, key in SERVICE_PASSWORD_KEYS.items():
                given = env.values[password_variable(service)]
                assert env.secrets[given] == (env.secrets[password][0], key), f"{where}: {service}'s password"
        else:
            assert role in SERVICE_SCHEMAS, f"{where} uses the database"
            assert user == role_of(role), f"{where} must connect as {role_of(role)}, not {user}"
            assert env.secrets[password][1] == SERVICE_PASSWORD_KEYS[role], where
            assert not any(name.endswith("_DB_PASSWORD") for name in env.values), f"{where} sees other passwords"
        roles_seen.add(user)
    assert roles_seen == {db["username"], *(role_of(s) for s in SERVICE_SCHEMAS)}


def test_service_passwords_are_generated_distinct_and_never_values(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(DEFAULT)
    (secret,) = [s for s in rendered.of_kind("Secret") if "password" in s.get("data", {})]
    passwords = {
        key: base64.b64decode(secret["data"][key]).decode() for key in ("password", *SERVICE_PASSWORD_KEYS.values())
    }
    assert len(set(passwords.values())) == len(passwords), "one password per role"
    for key, password in passwords.items():
        assert len(password) >= 16 and password.isalnum(), f"{key}: a generated password, safe inside DATABASE_URL"

    def password_values(node: object, path: str = "") -> dict[str, object]:
        if not isinstance(node, dict):
            return {}
        found: dict[str, object] = {}
        for key, value in node.items():
            where = f"{path}.{key}".lstrip(".")
            if "password" in key.lower() and not key.endswith("Key"):
                found[where] = value
            found.update(password_values(value, where))
        return found

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert password_values(defaults) == {"postgresql.password": ""}, "no password is a default value"


def test_gateway_settings_reach_the_gateway(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(CUSTOM)
    (gateway,) = [w for w in rendered.workloads() if workload_role(w) == "gateway"]
    env = resolve_env(rendered, pod_spec(gateway)["containers"][0]).values
    assert env["GATEWAY_READ_TIMEOUT_S"] == "12.5"
    assert env["GATEWAY_MAX_BODY_BYTES"] == "2048"
    assert "GATEWAY_CONNECT_TIMEOUT_S" not in env, "unset values keep the application's default"
    assert not rendered.of_kind("Ingress"), "ingress.enabled=false"


def test_pods_roll_when_their_configuration_changes(render: Callable[[Mode], Rendered]) -> None:
    def checksums(rendered: Rendered) -> set[str]:
        return {pod_template(w)["metadata"]["annotations"]["checksum/config"] for w in rendered.of_kind("Deployment")}

    assert checksums(render(DEFAULT)) != checksums(render(CUSTOM))


# ------------------------------------------------------------------- bundled infrastructure


def test_kafka_statefulset(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(DEFAULT)
    values = DEFAULT.values()
    (kafka,) = [w for w in rendered.workloads() if workload_role(w) == "kafka"]
    spec = pod_spec(kafka)
    assert spec["enableServiceLinks"] is False, "a Service named kafka would inject KAFKA_PORT into the config"
    (container,) = spec["containers"]
    assert container["image"].startswith("apache/kafka:4.1."), container["image"]
    env = resolve_env(rendered, container).values
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["CLUSTER_ID"] == values["kafka"]["clusterId"]
    node_id = env["KAFKA_NODE_ID"]
    ports = container_port_numbers(container)

    # Every listener is a container port, the controller quorum is this node.
    listeners = {}
    for listener in env["KAFKA_LISTENERS"].split(","):
        name, _, rest = listener.partition("://")
        listeners[name] = int(rest.rsplit(":", 1)[1])
        assert listeners[name] in ports.values(), f"listener {listener} is not a container port"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == node_id
    assert voter.split(":")[0] in ("localhost", "127.0.0.1")
    assert int(voter.split(":")[1]) == listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]]
    for advertised in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, _, address = advertised.partition("://")
        assert int(address.rsplit(":", 1)[1]) == listeners[name], advertised

    # The log directory is the persistent volume.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim_names = {c["metadata"]["name"] for c in kafka["spec"]["volumeClaimTemplates"]}
    assert mounts.get(env["KAFKA_LOG_DIRS"]) in claim_names, "KAFKA_LOG_DIRS must be the PVC mount"


def test_postgresql_statefulset(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(DEFAULT)
    (postgres,) = [w for w in rendered.workloads() if workload_role(w) == "postgresql"]
    (container,) = pod_spec(postgres)["containers"]
    assert container["image"] in ("postgres:15", "postgres:16"), container["image"]
    env = resolve_env(rendered, container)
    secret_values = {}
    for token, (name, key) in env.secrets.items():
        secret = rendered.named("Secret", name)
        assert secret is not None
        secret_values[token] = base64.b64decode(secret["data"][key]).decode()
    resolved = {k: secret_values.get(v, v) for k, v in env.values.items()}
    assert env.values["POSTGRES_PASSWORD"] in env.secrets, "the password comes from the Secret"
    password = secret_values[env.values["POSTGRES_PASSWORD"]]
    assert len(password) >= 16 and password.isalnum(), "a generated password, safe inside DATABASE_URL"

    # The database the services are configured for is the one this server creates.
    config = next(c for c in rendered.of_kind("ConfigMap") if "DATABASE_NAME" in c.get("data", {}))
    assert resolved["POSTGRES_DB"] == config["data"]["DATABASE_NAME"]
    assert resolved["POSTGRES_USER"] == config["data"]["DATABASE_USER"]

    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim_names = {c["metadata"]["name"] for c in postgres["spec"]["volumeClaimTemplates"]}
    data_mounts = [path for path, volume in mounts.items() if volume in claim_names]
    assert any(resolved["PGDATA"].startswith(path.rstrip("/") + "/") for path in data_mounts), (
        "PGDATA must be on the PVC"
    )
    for probe in ("livenessProbe", "readinessProbe"):
        assert "pg_isready" in " ".join(container[probe]["exec"]["command"]), probe


def test_external_mode_renders_no_bundled_infrastructure(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(EXTERNAL)
    values = external_values()
    assert not rendered.of_kind("StatefulSet")
    assert not rendered.of_kind("PersistentVolumeClaim")
    assert not rendered.of_kind("Secret"), "the password comes from externalDatabase.existingSecret"
    assert {workload_role(w) for w in rendered.workloads()} == {*SERVICES, "migrate"}
    for workload, container in all_containers(rendered):
        env = resolve_env(rendered, container).values
        if "DATABASE_URL" in env:
            assert env["DATABASE_HOST"] == values["externalDatabase"]["host"], workload["metadata"]["name"]
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            assert env["KAFKA_BOOTSTRAP_SERVERS"] == values["externalKafka"]["bootstrapServers"]


# ------------------------------------------------------------------------- rejected values


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["postgresql.enabled=false"], "No database configured"),
        (["kafka.enabled=false"], "No Kafka configured"),
        (["postgresql.enabled=false", "externalDatabase.host=db.example"], "externalDatabase.existingSecret is empty"),
        (["externalDatabase.host=db.example", "externalDatabase.existingSecret=s"], "set postgresql.enabled=false"),
        (["externalKafka.bootstrapServers=k:9092"], "set kafka.enabled=false"),
    ],
    ids=["no-database", "no-kafka", "no-db-secret", "db-ambiguous", "kafka-ambiguous"],
)
def test_rendering_fails_clearly_without_infrastructure(helm: str, settings: list[str], message: str) -> None:
    proc = run_helm(helm, *Mode("invalid", set_values=tuple(settings)).template_args())
    assert proc.returncode != 0, f"rendering with {settings} should fail"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "services.billing.replica=3",  # typo of replicas
        "kafka.clusterId=not-a-uuid",
        "config.logFormat=xml",
        "externalKafka.bootstrapServers=no-port-here",
        "gateway.port=70000",
    ],
)
def test_schema_rejects_bad_values(helm: str, setting: str) -> None:
    proc = run_helm(helm, *Mode("invalid", set_values=(setting,)).template_args())
    assert proc.returncode != 0, f"--set {setting} should be rejected"
    assert "schema" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------ authentication (issue 9)

AUTH = Mode(
    "auth",
    set_values=(
        "auth.enabled=true",
        "auth.issuerUrl=https://sso.example.com/realms/orbilnot",
        "auth.audience=shop-api",
    ),
)
API_ROLES = ("billing", "order", "notification", "gateway")


def api_process_env(rendered: Rendered) -> dict[str, dict[str, str]]:
    return {
        workload_role(w): resolve_env(rendered, pod_spec(w)["containers"][0]).values
        for w in rendered.workloads()
        if workload_role(w) in API_ROLES
    }


def test_auth_is_off_by_default(rendered: Rendered) -> None:
    envs = api_process_env(rendered)
    assert set(envs) == set(API_ROLES)
    for role, env in envs.items():
        assert env["AUTH_MODE"] == "off", role
        assert "OIDC_ISSUER_URL" not in env, role


def test_auth_values_reach_every_service_and_the_gateway(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(AUTH)
    for role, env in api_process_env(rendered).items():
        assert env["AUTH_MODE"] == "oidc", role
        assert env["OIDC_ISSUER_URL"] == "https://sso.example.com/realms/orbilnot", role
        assert env["OIDC_AUDIENCE"] == "shop-api", role
    assert not [w for w in rendered.workloads() if "keycloak" in w["metadata"]["name"]], "the issuer is external"
    for obj in rendered.objects:
        kubernetes_validate.validate(obj, SCHEMA_VERSIONS[0], strict=True)


def test_auth_enabled_without_an_issuer_fails_clearly(helm: str) -> None:
    proc = run_helm(helm, *Mode("invalid", set_values=("auth.enabled=true",)).template_args())
    assert proc.returncode != 0
    assert "auth.issuerUrl is empty" in proc.stderr, proc.stderr


@pytest.mark.parametrize("setting", ["auth.issuerUrl=sso.example.com", "auth.enable=true", "auth.audience="])
def test_schema_rejects_bad_auth_values(helm: str, setting: str) -> None:
    proc = run_helm(helm, *Mode("invalid", set_values=(setting,)).template_args())
    assert proc.returncode != 0, f"--set {setting} should be rejected"
    assert "schema" in proc.stderr, proc.stderr
