"""Helpers of the deployment checks: rendering the chart, walking rendered objects, resolving a
container's environment the way the kubelet does, and asking the real CLI parser whether a
command line is one `orbilnot` accepts.

Named `deploy_support` (not `helpers`) because the test directories have no `__init__.py` and
share one module namespace.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orbilnot.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm"
EXTERNAL_VALUES = CHART / "ci" / "external-values.yaml"
ALL_OPTIONS_VALUES = CHART / "ci" / "all-options-values.yaml"
ENSURE_HELM = REPO / "scripts" / "ensure-helm.sh"
NAMESPACE = "orbilnot-test"

Manifest = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


# ----------------------------------------------------------------------------------------- helm


def ensure_helm() -> str:
    """Path to helm v3.22.0, built into .orbilnot/bin by scripts/ensure-helm.sh if missing."""
    proc = subprocess.run(
        ["bash", str(ENSURE_HELM)], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/ensure-helm.sh failed ({proc.returncode}):\n{proc.stderr}")
    path = proc.stdout.strip().splitlines()[-1]
    if not Path(path).is_file():
        raise RuntimeError(f"scripts/ensure-helm.sh printed {path!r}, which is not a file")
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


@dataclass(frozen=True)
class Mode:
    """One way of rendering the chart: a release name and values."""

    name: str
    release: str = "orbilnot"
    values_files: tuple[Path, ...] = ()
    set_values: tuple[str, ...] = ()

    def template_args(self) -> list[str]:
        args = ["template", self.release, str(CHART), "--namespace", NAMESPACE]
        for path in self.values_files:
            args += ["--values", str(path)]
        for item in self.set_values:
            args += ["--set", item]
        return args

    def values(self) -> dict[str, Any]:
        """The user-supplied values of this mode merged over values.yaml (dotted --set keys only)."""
        merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
        for path in self.values_files:
            _deep_merge(merged, yaml.safe_load(path.read_text()))
        for item in self.set_values:
            key, _, raw = item.partition("=")
            node = merged
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(raw) if raw else ""
        return merged


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


DEFAULT = Mode("default")
EXTERNAL = Mode("external", values_files=(EXTERNAL_VALUES,))
# Another release name and changed ports, image and options: catches names, ports or images
# hard-coded in one template but not another.
CUSTOM = Mode(
    "custom",
    release="shop",
    set_values=(
        "image.repository=registry.example.com/team/orbilnot",
        "image.tag=1.2.3",
        "services.billing.port=9181",
        "services.order.port=9182",
        "services.notification.replicas=3",
        "gateway.port=9080",
        "gateway.readTimeoutSeconds=12.5",
        "gateway.maxBodyBytes=2048",
        "ingress.enabled=false",
        "config.topicPartitions=12",
    ),
)
# An external Kafka that wants SCRAM-SHA-512 over TLS, with replicated topics.
EXTERNAL_SECURED = Mode(
    "external-secured",
    values_files=(EXTERNAL_VALUES,),
    set_values=(
        "externalKafka.securityProtocol=SASL_SSL",
        "externalKafka.sasl.mechanism=SCRAM-SHA-512",
        "externalKafka.sasl.username=orbilnot",
        "externalKafka.sasl.existingSecret=orbilnot-kafka",
        "externalKafka.sasl.existingSecretPasswordKey=sasl-password",
        "externalKafka.tls.caSecret=kafka-ca",
        "externalKafka.tls.caSecretKey=ca.pem",
        "config.topicReplicationFactor=3",
        "config.topicMinInsyncReplicas=2",
    ),
)
# Every operator option set at once (helm/ci/all-options-values.yaml).
ALL_OPTIONS = Mode("all-options", values_files=(ALL_OPTIONS_VALUES,))
MODES = (DEFAULT, EXTERNAL, EXTERNAL_SECURED, CUSTOM, ALL_OPTIONS)


# ------------------------------------------------------------------------------ rendered objects


@dataclass
class Rendered:
    mode: Mode
    objects: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> Manifest | None:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    def workloads(self) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] in WORKLOAD_KINDS]

    def service(self, host: str) -> Manifest | None:
        """The rendered Service a DNS name points at (short or namespace-qualified form)."""
        parts = host.split(".")
        name = parts[0]
        rest = parts[1:]
        allowed_suffixes: tuple[list[str], ...] = (
            [],
            [NAMESPACE],
            [NAMESPACE, "svc"],
            [NAMESPACE, "svc", "cluster", "local"],
        )
        if rest not in allowed_suffixes:
            return None
        return self.named("Service", name)

    def selected_workloads(self, service: Manifest) -> list[Manifest]:
        selector = service["spec"].get("selector") or {}
        if not selector:
            return []
        return [
            w
            for w in self.workloads()
            if all(pod_template(w)["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]


def parse_manifests(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def pod_template(workload: Manifest) -> Manifest:
    return workload["spec"]["template"]  # type: ignore[no-any-return]


def pod_spec(workload: Manifest) -> Manifest:
    return pod_template(workload)["spec"]  # type: ignore[no-any-return]


def containers(workload: Manifest, *, init: bool = True) -> list[Manifest]:
    spec = pod_spec(workload)
    found = list(spec.get("initContainers", [])) if init else []
    return found + list(spec["containers"])


def all_containers(rendered: Rendered) -> Iterator[tuple[Manifest, Manifest]]:
    for workload in rendered.workloads():
        for container in containers(workload):
            yield workload, container


def container_port_numbers(container: Manifest) -> dict[str | int, int]:
    """Every way a probe or Service may name a port of this container -> the port number."""
    ports: dict[str | int, int] = {}
    for port in container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


# ----------------------------------------------------------------------------- the orbilnot CLI


class CliRejected(AssertionError):
    pass


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse with the real `orbilnot` parser; argparse's exit becomes an assertion error."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise CliRejected(f"`orbilnot` rejects the arguments {argv!r} (exit {exc.code})") from None


def orbilnot_argv(container: Manifest) -> list[str] | None:
    """The arguments after `orbilnot` if this container runs the orbilnot CLI, else None."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv and argv[0] == "orbilnot":
        return [str(arg) for arg in argv[1:]]
    return None


def workload_role(workload: Manifest) -> str:
    """billing/order/notification/gateway (by `orbilnot serve`), migrate, postgresql or kafka."""
    main = pod_spec(workload)["containers"][0]
    argv = orbilnot_argv(main)
    if argv is not None:
        args = parse_cli(argv)
        return str(args.service) if args.command == "serve" else str(args.command)
    image = main["image"]
    # [registry/]repository:tag[@digest]: judged by the repository's last two path segments.
    repository = image.split("@")[0].rsplit(":", 1)[0]
    if repository.split("/")[-1] == "postgres":
        return "postgresql"
    if repository.split("/")[-2:] == ["apache", "kafka"]:
        return "kafka"
    return f"unknown:{image}"


# ------------------------------------------------------------------------- environment resolution


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class ResolvedEnv:
    """A container's environment after envFrom, env and $(VAR) expansion.

    Values taken from Secrets are not known statically; they appear as an opaque placeholder
    token, and `secrets` says which Secret and key each token stands for.
    """

    values: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)
    config_maps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def operator_sources(values: Mapping[str, Any]) -> set[str]:
    """Names of the ConfigMaps and Secrets the operator's extraEnvFrom entries bring in."""
    components = [values["migrations"], values["gateway"], values["postgresql"], values["kafka"]]
    components += list(values["services"].values())
    names = set()
    for component in components:
        for source in component.get("extraEnvFrom") or []:
            for kind in ("configMapRef", "secretRef"):
                if kind in source:
                    names.add(source[kind]["name"])
    return names


def expected_image(values: Mapping[str, Any], image: Mapping[str, Any], default_tag: str) -> str:
    """What an image reference must be: [global.imageRegistry/]repository:tag[@digest]."""
    repository = image["repository"]
    if registry := values.get("global", {}).get("imageRegistry"):
        repository = f"{registry.rstrip('/')}/{repository}"
    ref = f"{repository}:{image.get('tag') or default_tag}"
    if image.get("digest"):
        ref += f"@{image['digest']}"
    return ref


def resolve_env(rendered: Rendered, container: Manifest) -> ResolvedEnv:
    env = ResolvedEnv()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            env.config_maps.append(name)
            config_map = rendered.named("ConfigMap", name)
            if config_map is None:
                if name not in operator_sources(rendered.mode.values()):
                    env.problems.append(f"envFrom names ConfigMap {name!r}, which the chart does not render")
                continue
            prefix = source.get("prefix", "")
            for key, value in (config_map.get("data") or {}).items():
                env.values[prefix + key] = str(value)
        elif "secretRef" in source and source["secretRef"]["name"] in operator_sources(rendered.mode.values()):
            continue
        else:
            env.problems.append(f"unchecked envFrom source {source!r}")

    def expand(text: str) -> str:
        # Kubernetes semantics: $(VAR) of a variable defined before; $$ is a literal $; an
        # unknown reference stays as written.
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return env.values.get(match.group(1), match.group(0))

        return _REF.sub(replace, text)

    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env.values[name] = expand(str(var["value"]))
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            token = f"SECRETVALUE{len(env.secrets)}"
            env.secrets[token] = (ref["name"], ref["key"])
            env.values[name] = token
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            config_map = rendered.named("ConfigMap", ref["name"])
            if config_map is None or ref["key"] not in (config_map.get("data") or {}):
                env.problems.append(f"{name}: ConfigMap key {ref['name']}/{ref['key']} is not rendered")
            else:
                env.values[name] = str(config_map["data"][ref["key"]])
        else:
            env.values[name] = ""  # fieldRef/resourceFieldRef: runtime values, not addresses
    for name, value in env.values.items():
        if _REF.search(value.replace("$$", "")):
            env.problems.append(f"{name}={value!r} still holds an unresolved $(VAR) reference")
    return env


# ------------------------------------------------------------------------------------ addresses


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    scheme: str = ""


_ADDRESS = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?:[^@/]*@)?(?P<host>[^:/@,]+):(?P<port>\d+)(?:[/?].*)?$"
)


def parse_addresses(value: str) -> list[Address]:
    """`host:port`, `scheme://[user:pass@]host:port[/path]`, comma-separated lists of either."""
    found = []
    for part in value.split(","):
        match = _ADDRESS.match(part.strip())
        if not match:
            raise AssertionError(f"{part!r} (in {value!r}) is not of the form [scheme://][user@]host:port[/...]")
        found.append(Address(match["host"], int(match["port"]), match["scheme"] or ""))
    return found
