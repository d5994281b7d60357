"""A stand-in for a Kubernetes API server, enough for Helm's render-time `lookup`.

`helm template --dry-run=server` asks a cluster for the objects the chart looks up: the
Secret holding the generated password (kept across uninstall), an existingSecret's data, and
the installed StatefulSets whose volume claims cannot change. This answers discovery and GETs
from a dict of objects, so those rendering paths are checked without a cluster. The live
cluster test (`make k8s-test`, external mode) runs the existingSecret lookup against a real one;
the generated Secret and the StatefulSets belong to the bundled services, which it cannot run.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_CORE = [
    ("secrets", "Secret"),
    ("configmaps", "ConfigMap"),
    ("services", "Service"),
    ("pods", "Pod"),
    ("serviceaccounts", "ServiceAccount"),
]
_GROUPS = {
    "apps/v1": [("statefulsets", "StatefulSet"), ("deployments", "Deployment")],
    "batch/v1": [("jobs", "Job")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy"), ("ingresses", "Ingress")],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler")],
}
_PLURALS = {kind: name for name, kind in _CORE + [pair for pairs in _GROUPS.values() for pair in pairs]}


def _resources(group_version: str, kinds: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": name, "singularName": kind.lower(), "namespaced": True, "kind": kind, "verbs": ["get", "list"]}
            for name, kind in kinds
        ],
    }


_DISCOVERY: dict[str, Any] = {
    "/version": {"major": "1", "minor": "34", "gitVersion": "v1.34.0"},
    "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    "/apis": {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": gv.split("/")[0],
                "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
            }
            for gv in _GROUPS
        ],
    },
    "/api/v1": _resources("v1", _CORE),
    **{f"/apis/{gv}": _resources(gv, kinds) for gv, kinds in _GROUPS.items()},
}


def object_path(obj: dict[str, Any]) -> str:
    plural = _PLURALS[obj["kind"]]
    prefix = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
    return f"{prefix}/namespaces/{obj['metadata']['namespace']}/{plural}/{obj['metadata']['name']}"


@contextmanager
def kube_api(objects: list[dict[str, Any]], directory: Path) -> Iterator[Path]:
    """Serve `objects` on a free local port; yields a kubeconfig that points at it."""
    by_path = {object_path(obj): obj for obj in objects}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlparse(self.path).path
            body = _DISCOVERY.get(path) or by_path.get(path)
            code = 200
            if body is None and path.endswith("/secrets"):
                body = {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}  # no releases
            if body is None:
                code = 404
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": "stub", "user": {}}],
                "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
                "current-context": "stub",
            }
        )
    )
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
