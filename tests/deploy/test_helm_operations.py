"""What operators need from the chart (issue 13): a reinstall that finds its data, a connection
budget checked before anything is applied, the values every workload takes, disruption budgets,
autoscalers, graceful rollouts, network policies, a storage guard and `helm test`.

Rendered with `helm template` (and, where the chart looks up cluster objects, against
kube_api_stub), asserted on the objects."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    ALL_OPTIONS,
    CHART,
    DEFAULT,
    EXTERNAL,
    EXTERNAL_SECURED,
    EXTERNAL_VALUES,
    NAMESPACE,
    REPO,
    Manifest,
    Mode,
    Rendered,
    containers,
    orbilnot_argv,
    parse_cli,
    parse_manifests,
    pod_spec,
    pod_template,
    resolve_env,
    run_helm,
    workload_role,
)
from kube_api_stub import kube_api

from orbilnot.shared.config import ServiceSettings

APP_SERVICES = ("billing", "order", "notification")
STATELESS = (*APP_SERVICES, "gateway")


def values_of(values: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    """The values block that configures the workload of one role."""
    if role in APP_SERVICES:
        return values["services"][role]  # type: ignore[no-any-return]
    return values[{"migrate": "migrations"}.get(role, role)]  # type: ignore[no-any-return]


def by_role(rendered: Rendered) -> dict[str, Manifest]:
    return {workload_role(w): w for w in rendered.workloads()}


def render_failure(helm: str, *settings: str, values_files: tuple[Path, ...] = ()) -> str:
    proc = run_helm(helm, *Mode("failing", values_files=values_files, set_values=settings).template_args())
    assert proc.returncode != 0, f"rendering with {settings} should fail"
    return proc.stderr


# ------------------------------------------------------------------------ secrets, reinstall


def test_generated_secret_survives_uninstall(render: Callable[[Mode], Rendered]) -> None:
    (secret,) = render(DEFAULT).of_kind("Secret")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_existing_secret_replaces_the_generated_one(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(ALL_OPTIONS)  # postgresql.existingSecret: shop-db-credentials / db-password
    assert not rendered.of_kind("Secret"), "the operator's Secret is used, none is generated"
    for workload in rendered.workloads():
        role = workload_role(workload)
        for container in containers(workload):
            env = resolve_env(rendered, container)
            if "POSTGRES_PASSWORD" in env.values or "DATABASE_URL" in env.values:
                names = {name for name, _ in env.secrets.values()}
                assert names == {"shop-db-credentials"}, workload["metadata"]["name"]
                owner_key = ("shop-db-credentials", "db-password")
                own_key = ("shop-db-credentials", f"{role}-password")
                expected = owner_key if role in ("migrate", "postgresql") else own_key
                password = env.values.get("POSTGRES_PASSWORD") or env.values["DATABASE_PASSWORD"]
                assert env.secrets[password] == expected, f"{workload['metadata']['name']}/{container['name']}"


def _checksums(rendered: Rendered) -> set[str]:
    found = set()
    for workload in rendered.workloads():
        if workload_role(workload) in (*STATELESS, "migrate"):
            found.add(pod_template(workload)["metadata"]["annotations"]["checksum/secret"])
    return found


@pytest.fixture
def helm_with_cluster(helm: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`helm template --dry-run=server` against kube_api_stub holding the given objects."""

    def run(objects: list[Manifest], *args: str) -> subprocess.CompletedProcess[str]:
        for obj in objects:
            obj["metadata"].setdefault("namespace", NAMESPACE)
        with kube_api(objects, tmp_path) as kubeconfig:
            return subprocess.run(
                [helm, "template", "orbilnot", str(CHART), "--namespace", NAMESPACE, "--dry-run=server", *args],
                cwd=REPO,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

    return run


def _secret(name: str, **data: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def test_install_after_uninstall_reuses_the_kept_password(
    helm_with_cluster: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    kept = _secret("orbilnot-postgresql", username="orbilnot", password="the-kept-password")
    proc = helm_with_cluster([kept])
    assert proc.returncode == 0, proc.stderr
    (secret,) = [o for o in parse_manifests(proc.stdout) if o["kind"] == "Secret"]
    assert base64.b64decode(secret["data"]["password"]).decode() == "the-kept-password"


def test_pods_roll_when_the_database_passwords_change(
    helm_with_cluster: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """The generated Secret, as installed (read back with lookup): the same passwords give the
    same checksum on every orbilnot pod; a changed one (the owner's or a service's) rolls them."""

    def checksums(**passwords: str) -> set[str]:
        keys = {"password": "owner", "billing-password": "b", "order-password": "o", "notification-password": "n"}
        keys.update({key.replace("_", "-"): value for key, value in passwords.items()})
        proc = helm_with_cluster([_secret("orbilnot-postgresql", username="orbilnot", **keys)])
        assert proc.returncode == 0, proc.stderr
        return _checksums(Rendered(DEFAULT, parse_manifests(proc.stdout)))

    first = checksums()
    assert len(first) == 1, "every orbilnot pod carries the same password checksum"
    assert first == checksums()
    assert first != checksums(password="owner-changed")
    assert first != checksums(order_password="o-changed")


def test_pods_roll_when_an_existing_secret_changes(
    helm_with_cluster: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    def checksum(password: str) -> set[str]:
        proc = helm_with_cluster(
            [_secret("operator-db", password=password)],
            "--values",
            str(EXTERNAL_VALUES),
            "--set",
            "externalDatabase.existingSecret=operator-db",
        )
        assert proc.returncode == 0, proc.stderr
        return _checksums(Rendered(EXTERNAL, parse_manifests(proc.stdout)))

    assert checksum("one") != checksum("two")
    assert checksum("one") == checksum("one")


# ------------------------------------------------------------------------- storage guard


def _installed_statefulset(name: str, size: str, storage_class: str | None) -> Manifest:
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if storage_class:
        claim_spec["storageClassName"] = storage_class
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim_spec}]},
    }


@pytest.mark.parametrize(
    ("component", "setting", "installed_size", "installed_class"),
    [
        ("postgresql", "postgresql.persistence.size=10Gi", "2Gi", None),
        ("postgresql", "postgresql.persistence.storageClass=fast", "2Gi", None),
        ("kafka", "kafka.persistence.size=20Gi", "5Gi", None),
    ],
)
def test_a_storage_change_fails_with_the_charts_message(
    helm_with_cluster: Callable[..., subprocess.CompletedProcess[str]],
    component: str,
    setting: str,
    installed_size: str,
    installed_class: str | None,
) -> None:
    installed = _installed_statefulset(f"orbilnot-{component}", installed_size, installed_class)
    proc = helm_with_cluster([installed], "--set", setting)
    assert proc.returncode != 0
    assert f"{component}.persistence cannot change once installed" in proc.stderr, proc.stderr
    assert installed_size in proc.stderr

    unchanged = helm_with_cluster([_installed_statefulset(f"orbilnot-{component}", installed_size, installed_class)])
    assert unchanged.returncode == 0, unchanged.stderr


# -------------------------------------------------------------------------- connection budget


def test_connection_budget_fails_with_the_numbers(helm: str) -> None:
    message = render_failure(helm, "services.order.dbPoolSize=30")
    assert "Connection budget exceeded" in message
    assert "order        (2 pods + 1 surge) x (dbPoolSize 30 + 1 readiness) = 93" in message
    assert "postgresql.maxConnections is 100" in message
    assert "146 > 100" in message


def test_connection_budget_is_exact_at_the_limit(helm: str) -> None:
    # Default: 3 services x (2 pods + 1 surge) x (6 + 1) = 63, + 1 migration + 10 headroom = 74.
    fits = run_helm(helm, *Mode("fits", set_values=("postgresql.maxConnections=74",)).template_args())
    assert fits.returncode == 0, fits.stderr
    assert "74 > 73" in render_failure(helm, "postgresql.maxConnections=73")


def test_connection_budget_counts_autoscaling_maximum_and_surge(helm: str) -> None:
    message = render_failure(
        helm, "services.billing.autoscaling.enabled=true", "services.billing.autoscaling.maxReplicas=10"
    )
    assert "billing      (10 pods + 1 surge)" in message
    message = render_failure(helm, "rollout.maxSurge=4")
    assert "(2 pods + 4 surge)" in message


def test_connection_budget_of_an_external_database(helm: str) -> None:
    message = render_failure(helm, "externalDatabase.maxConnections=50", values_files=(EXTERNAL_VALUES,))
    assert "externalDatabase.maxConnections is 50" in message


def test_pool_size_and_max_connections_reach_the_processes(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(ALL_OPTIONS)
    values = ALL_OPTIONS.values()
    roles = by_role(rendered)
    for service in APP_SERVICES:
        main = pod_spec(roles[service])["containers"][0]
        env = resolve_env(rendered, main).values
        pool = env["DB_POOL_SIZE"]
        assert int(pool) == values["services"][service]["dbPoolSize"]
        assert "db_pool_size" in ServiceSettings.model_fields
    (postgres,) = pod_spec(roles["postgresql"])["containers"]
    assert postgres["args"] == ["-c", f"max_connections={values['postgresql']['maxConnections']}"]


# ------------------------------------------------------------------------- operator values


@pytest.mark.parametrize("role", [*STATELESS, "migrate", "postgresql", "kafka"])
def test_operator_values_reach_every_workload(render: Callable[[Mode], Rendered], role: str) -> None:
    rendered = render(ALL_OPTIONS)
    values = ALL_OPTIONS.values()
    cfg = values_of(values, role)
    workload = by_role(rendered)[role]
    template = pod_template(workload)
    spec = template["spec"]

    assert spec["serviceAccountName"] == values["serviceAccount"]["name"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["imagePullSecrets"] == values["imagePullSecrets"]
    assert spec["nodeSelector"] == cfg["nodeSelector"]
    assert spec["tolerations"] == cfg["tolerations"]
    assert spec["affinity"] == cfg["affinity"]
    assert spec["topologySpreadConstraints"] == cfg["topologySpreadConstraints"]
    assert spec["priorityClassName"] == cfg["priorityClassName"]
    assert cfg["podAnnotations"].items() <= template["metadata"]["annotations"].items()
    assert cfg["podLabels"].items() <= template["metadata"]["labels"].items()
    if "selector" in workload["spec"]:  # a Job's selector is generated by Kubernetes
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items(), "podLabels must not break the selector"
    for container in containers(workload):
        env_names = [var["name"] for var in container.get("env", [])]
        for var in cfg["extraEnv"]:
            assert var["name"] in env_names, f"{container['name']}: {var['name']} missing"
        for source in cfg["extraEnvFrom"]:
            assert source in container.get("envFrom", []), container["name"]
        assert container["image"].startswith(values["global"]["imageRegistry"] + "/")
        assert "@sha256:" in container["image"]


def test_probe_timings_per_component(render: Callable[[Mode], Rendered]) -> None:
    roles = by_role(render(ALL_OPTIONS))
    billing = pod_spec(roles["billing"])["containers"][0]
    assert billing["livenessProbe"]["periodSeconds"] == 20
    assert billing["livenessProbe"]["failureThreshold"] == 4
    assert billing["livenessProbe"]["initialDelaySeconds"] == 15, "unset keys keep the top-level probes"
    assert billing["readinessProbe"]["timeoutSeconds"] == 2
    order = pod_spec(roles["order"])["containers"][0]
    assert order["livenessProbe"]["periodSeconds"] == 10
    gateway = pod_spec(roles["gateway"])["containers"][0]
    assert gateway["readinessProbe"]["periodSeconds"] == 3
    postgres = pod_spec(roles["postgresql"])["containers"][0]
    assert postgres["startupProbe"]["failureThreshold"] == 120
    assert postgres["livenessProbe"]["periodSeconds"] == 15
    assert "pg_isready" in " ".join(postgres["livenessProbe"]["exec"]["command"])
    kafka = pod_spec(roles["kafka"])["containers"][0]
    assert kafka["readinessProbe"]["periodSeconds"] == 10


def test_service_account_of_its_own(render: Callable[[Mode], Rendered]) -> None:
    for mode in (DEFAULT, ALL_OPTIONS):
        rendered = render(mode)
        (account,) = rendered.of_kind("ServiceAccount")
        name = account["metadata"]["name"]
        assert account["automountServiceAccountToken"] is False
        for workload in rendered.workloads():
            assert pod_spec(workload)["serviceAccountName"] == name
    assert render(ALL_OPTIONS).of_kind("ServiceAccount")[0]["metadata"]["annotations"] == {
        "iam.example.com/role": "orbilnot"
    }


def test_ingress_class_and_tls(render: Callable[[Mode], Rendered]) -> None:
    (ingress,) = render(ALL_OPTIONS).of_kind("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "shop-example-com-tls", "hosts": ["shop.example.com"]}]


# ------------------------------------------------------------------- disruptions and rollouts


@pytest.mark.parametrize("mode", [DEFAULT, ALL_OPTIONS], ids=lambda m: m.name)
def test_a_disruption_budget_per_stateless_component(render: Callable[[Mode], Rendered], mode: Mode) -> None:
    rendered = render(mode)
    budgets = rendered.of_kind("PodDisruptionBudget")
    covered = []
    for budget in budgets:
        assert budget["spec"]["maxUnavailable"] == 1
        selector = budget["spec"]["selector"]["matchLabels"]
        selected = [
            w for w in rendered.workloads() if selector.items() <= pod_template(w)["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, budget["metadata"]["name"]
        covered.append(workload_role(selected[0]))
    assert sorted(covered) == sorted(STATELESS)


def test_autoscalers_take_over_replicas(render: Callable[[Mode], Rendered]) -> None:
    assert not render(DEFAULT).of_kind("HorizontalPodAutoscaler"), "off by default"
    rendered = render(ALL_OPTIONS)
    roles = by_role(rendered)
    scaled = {}
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        (deployment,) = [w for w in rendered.of_kind("Deployment") if w["metadata"]["name"] == target["name"]]
        scaled[workload_role(deployment)] = hpa["spec"]
    assert set(scaled) == {"billing", "gateway"}
    assert (scaled["billing"]["minReplicas"], scaled["billing"]["maxReplicas"]) == (2, 5)
    assert "replicas" not in roles["billing"]["spec"], "the autoscaler owns replicas"
    assert roles["order"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("mode", [DEFAULT, ALL_OPTIONS], ids=lambda m: m.name)
def test_rollouts_drain_before_stopping(render: Callable[[Mode], Rendered], mode: Mode) -> None:
    values = mode.values()
    for role, workload in by_role(render(mode)).items():
        if role not in STATELESS:
            continue
        strategy = workload["spec"]["strategy"]["rollingUpdate"]
        assert strategy == {"maxSurge": values["rollout"]["maxSurge"], "maxUnavailable": 0}, role
        spec = pod_spec(workload)
        (main,) = spec["containers"]
        sleep = main["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep == ["sleep", str(values["rollout"]["preStopSleepSeconds"])], role
        assert spec["terminationGracePeriodSeconds"] > values["rollout"]["preStopSleepSeconds"] + 20, role


# ------------------------------------------------------------------------- network policies


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, options = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in options:
            return False
        if operator == "NotIn" and labels.get(key) in options:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _allowed(rendered: Rendered, source: Mapping[str, str], target: Mapping[str, str], port: int) -> bool:
    """NetworkPolicy semantics for a source pod in the release's namespace."""
    namespace_labels = {"kubernetes.io/metadata.name": NAMESPACE}
    policies = [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], target)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            for peer in rule.get("from", []):
                pods_match = "podSelector" not in peer or _selects(peer["podSelector"], source)
                if "namespaceSelector" in peer:
                    namespace_match = _selects(peer["namespaceSelector"], namespace_labels)
                else:
                    namespace_match = True  # a podSelector alone means the policy's own namespace
                if pods_match and namespace_match:
                    return True
    return False


@pytest.mark.parametrize("mode", [DEFAULT, EXTERNAL, ALL_OPTIONS], ids=lambda m: m.name)
def test_network_policies_allow_only_the_intended_paths(render: Callable[[Mode], Rendered], mode: Mode) -> None:
    rendered = render(mode)
    values = mode.values()
    pods = {role: pod_template(w)["metadata"]["labels"] for role, w in by_role(rendered).items()}
    (test_pod,) = [p for p in rendered.of_kind("Pod")]
    pods["helm-test"] = test_pod["metadata"]["labels"]
    pods["stranger"] = {"app": "something-else"}
    ports = {service: values["services"][service]["port"] for service in APP_SERVICES}
    ports |= {"gateway": values["gateway"]["port"], "postgresql": 5432, "kafka": 9092}
    may_reach = {
        **{service: {"gateway"} for service in APP_SERVICES},
        "gateway": set(pods),
        "postgresql": {*APP_SERVICES, "migrate"},
        "kafka": {*APP_SERVICES, "gateway"},  # the gateway: the console's live feed
    }
    for target, allowed_sources in may_reach.items():
        if target not in pods:
            continue  # external infrastructure: not the chart's to guard
        for source, labels in pods.items():
            if source == target:
                continue
            expected = source in allowed_sources
            actual = _allowed(rendered, labels, pods[target], ports[target])
            assert actual == expected, f"{source} -> {target}:{ports[target]}: allowed={actual}, want {expected}"


def test_network_policies_can_be_turned_off(render: Callable[[Mode], Rendered]) -> None:
    assert render(DEFAULT).of_kind("NetworkPolicy"), "on by default"
    assert not render(Mode("no-netpol", set_values=("networkPolicy.enabled=false",))).of_kind("NetworkPolicy")


# --------------------------------------------------------------------------------- helm test


@pytest.mark.parametrize("mode", [DEFAULT, ALL_OPTIONS], ids=lambda m: m.name)
def test_helm_test_runs_the_demo_against_the_gateway(render: Callable[[Mode], Rendered], mode: Mode) -> None:
    rendered = render(mode)
    (pod,) = rendered.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    argv = orbilnot_argv(container)
    assert argv is not None
    args = parse_cli(argv)
    assert args.command == "demo"
    host_port = args.gateway.removeprefix("http://")
    host, _, port = host_port.partition(":")
    service = rendered.named("Service", host)
    assert service is not None, f"{args.gateway} is no rendered Service"
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    (target,) = rendered.selected_workloads(service)
    assert workload_role(target) == "gateway"
    assert pod["spec"]["restartPolicy"] == "Never"


# ---------------------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    "setting",
    [
        "services.billing.extraEnvv[0].name=X",  # typo of extraEnv
        "rollout.maxSurge=-1",
        "image.digest=latest",
        "services.order.dbPoolSize=0",
        "podDisruptionBudget.maxUnavailable=0",
        "networkPolicy.enable=false",  # typo of enabled
    ],
)
def test_schema_rejects_bad_operator_values(helm: str, setting: str) -> None:
    assert "schema" in render_failure(helm, setting)


POD_OPTIONS = (
    "extraEnv",
    "extraEnvFrom",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
)


def test_all_options_values_file_sets_every_operator_option() -> None:
    """helm/ci/all-options-values.yaml is the lint and schema check of the operator options: one
    missing there would escape both."""
    options = yaml.safe_load((CHART / "ci" / "all-options-values.yaml").read_text())
    workloads = {
        "migrations": options["migrations"],
        "gateway": options["gateway"],
        "postgresql": options["postgresql"],
        "kafka": options["kafka"],
        **{f"services.{name}": options["services"][name] for name in APP_SERVICES},
    }
    missing = [f"{where}.{key}" for where, cfg in workloads.items() for key in POD_OPTIONS if not cfg.get(key)]
    for key in ("global.imageRegistry", "image.digest", "postgresql.image.digest", "kafka.image.digest"):
        section, *rest = key.split(".")
        node = options[section]
        for part in rest:
            node = node.get(part) if isinstance(node, dict) else None
        if not node:
            missing.append(key)
    for key in ("imagePullSecrets", "serviceAccount", "rollout", "podDisruptionBudget", "databaseBudget"):
        if not options.get(key):
            missing.append(key)
    for key in ("networkPolicy", "tests", "ingress"):
        if not options.get(key):
            missing.append(key)
    if not options["ingress"].get("tls") or not options["ingress"].get("className"):
        missing.append("ingress.tls/className")
    if not options["services"]["billing"].get("autoscaling", {}).get("enabled"):
        missing.append("services.billing.autoscaling")
    if not options["postgresql"].get("existingSecret") or not options["postgresql"].get("maxConnections"):
        missing.append("postgresql.existingSecret/maxConnections")
    assert not missing, f"all-options-values.yaml does not set: {missing}"


# ------------------------------------------------------------------------------------- NOTES


def test_notes_say_what_uninstall_keeps(helm: str, tmp_path: Path) -> None:
    def notes(*args: str) -> str:
        with kube_api([], tmp_path) as kubeconfig:
            proc = subprocess.run(
                [
                    *(helm, "install", "orbilnot", str(CHART), "--namespace", NAMESPACE),
                    *("--dry-run=server", "--disable-openapi-validation", *args),
                ],
                cwd=REPO,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split("NOTES:", 1)[1]

    bundled = notes()
    assert "helm uninstall orbilnot` keeps" in bundled
    assert "PersistentVolumeClaim data-orbilnot-postgresql-0" in bundled
    assert "Secret orbilnot-postgresql (helm.sh/resource-policy: keep)" in bundled
    assert "helm test orbilnot" in bundled
    external = notes("--values", str(EXTERNAL_VALUES))
    assert "nothing: the database and Kafka are external" in external


# ------------------------------------------------------------------------------ secured Kafka


def test_secured_external_kafka_reaches_the_services(render: Callable[[Mode], Rendered]) -> None:
    """The settings the chart renders build the client the services will use: SCRAM over TLS,
    the password from the operator's Secret, the CA file where its Secret is mounted."""
    rendered = render(EXTERNAL_SECURED)
    for service in APP_SERVICES:
        workload = by_role(rendered)[service]
        main = pod_spec(workload)["containers"][0]
        env = resolve_env(rendered, main)
        password_token = env.values["KAFKA_SASL_PASSWORD"]
        assert env.secrets[password_token] == ("orbilnot-kafka", "sasl-password")
        settings = ServiceSettings(
            **{k.lower(): v for k, v in env.values.items() if k != "DATABASE_URL"}, database_url="postgresql://u@h/db"
        )  # type: ignore[arg-type]
        connection = settings.kafka_connection()
        assert (connection.security_protocol, connection.sasl_mechanism, connection.sasl_username) == (
            "SASL_SSL",
            "SCRAM-SHA-512",
            "orbilnot",
        )
        assert (settings.kafka_topic_replication_factor, settings.kafka_topic_min_insync_replicas) == (3, 2)
        cafile = Path(str(connection.ssl_cafile))
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volume_name = mounts[str(cafile.parent)]
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == volume_name]
        assert volume["secret"]["secretName"] == "kafka-ca"
        assert cafile.name == "ca.pem"


def test_bundled_kafka_stays_plaintext_and_unreplicated(render: Callable[[Mode], Rendered], helm: str) -> None:
    rendered = render(DEFAULT)
    main = pod_spec(by_role(rendered)["order"])["containers"][0]
    env = resolve_env(rendered, main).values
    assert "KAFKA_SECURITY_PROTOCOL" not in env and "KAFKA_SASL_PASSWORD" not in env
    assert env["KAFKA_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "single broker" in render_failure(helm, "config.topicReplicationFactor=3")


def test_sasl_without_credentials_fails_clearly(helm: str) -> None:
    message = render_failure(helm, "externalKafka.securityProtocol=SASL_PLAINTEXT", values_files=(EXTERNAL_VALUES,))
    assert "externalKafka.sasl.username and externalKafka.sasl.existingSecret" in message
