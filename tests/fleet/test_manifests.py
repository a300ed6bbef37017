"""The Kubernetes manifests and the docker-compose fleet describe the fleet that scripts/fleet.sh runs (issue 16,
item 6). No cluster or Docker engine runs here, so they are checked as data: every Kubernetes object against the
Kubernetes API schemas (``kubernetes-validate``, strict: an unknown field is an error), then against tiergate
itself: the policy in the ConfigMap loads, every secret it names reaches the container from a Secret, the
container's arguments are ones ``tiergate serve`` accepts, probes hit routes the app serves, and the selectors,
port names and grace periods agree with each other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.fleet.fleet_harness import FLEET_CONFIG

K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yaml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
# The oldest Kubernetes release still in common support and the newest the package ships schemas for.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor"}  # Prometheus Operator: no schema in Kubernetes itself


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for _, doc in documents() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    return one("Deployment")["spec"]["template"]["spec"]["containers"][0]


def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(one("ConfigMap", "tiergate-policy")["data"]["policy.yaml"])
    return path


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    checked = 0
    for path, doc in documents():
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 8


def test_kustomization_lists_every_manifest_except_the_examples_and_crds() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    kinds_by_file: dict[str, set[str]] = {}
    for path, doc in documents():
        kinds_by_file.setdefault(path.name, set()).add(doc["kind"])
    expected = {name for name, kinds in kinds_by_file.items()
                if not kinds & CRD_KINDS and not name.endswith(".example.yaml")}
    assert listed == expected
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= {
        kind for name in listed for kind in kinds_by_file[name]}


def test_the_configmap_policy_loads_and_every_secret_it_names_comes_from_a_secret(tmp_path: Path) -> None:
    from router.config_loader import load_policy

    policy = load_policy(policy_file(tmp_path))
    text = one("ConfigMap", "tiergate-policy")["data"]["policy.yaml"]
    named = set(re.findall(r"(?:api_key_env|token_env|\benv):\s*([A-Z_][A-Z0-9_]*)", text))
    env = {e["name"]: e for e in container()["env"]}
    secrets = {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == "Secret"}
    for var in named | {"PGPASSWORD"}:
        assert var in env, f"the policy reads ${var} but the container does not set it"
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"], f"${var}: {ref} is not in secrets.example.yaml"
    # Shared state by the names dependencies.yaml gives it; the spool on the pod's own volume.
    metering = policy.config.metering
    services = {doc["metadata"]["name"] for _, doc in documents() if doc["kind"] == "Service"}
    assert re.match(r"redis://([^:/]+)", metering.redis or "")[1] in services
    assert re.match(r"postgresql://[^@]+@([^:/]+)", metering.ledger)[1] in services
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert metering.spool_dir.startswith(mounts["state"] + "/")


def test_the_deployment_runs_a_command_tiergate_accepts_with_probes_on_its_routes(tmp_path: Path) -> None:
    from proxy.app import create_app
    from proxy.cli import build_parser

    c = container()
    args = build_parser().parse_args(c["args"])
    assert args.command == "serve"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "policy")
    assert Path(args.config).parent == Path(mount["mountPath"]) and "subPath" not in mount  # updates reach the pod
    volume = next(v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "policy")
    assert volume["configMap"]["name"] == "tiergate-policy"
    assert Path(args.config).name in one("ConfigMap", "tiergate-policy")["data"]

    routes = {route.path for route in create_app(str(policy_file(tmp_path))).routes}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == args.port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in routes and c[probe]["httpGet"]["port"] in ports

    # Shutdown fits: preStop's wait, then tiergate's own grace, within what Kubernetes allows before SIGKILL.
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pre_stop + args.shutdown_grace_s < grace

    # Resources from the measured ~160 MB per worker: the request covers it, the limit leaves room.
    assert args.workers == 1
    memory = {k: int(c["resources"][k]["memory"].removesuffix("Mi")) for k in ("requests", "limits")}
    assert 160 < memory["requests"] < memory["limits"]
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in routes
    assert int(annotations["prometheus.io/port"]) == args.port


def test_service_hpa_pdb_and_servicemonitor_select_the_deployment() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0

    service = one("Service", "tiergate")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"] for p in container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports

    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1

    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tiergate"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    assert "cpu" in container()["resources"]["requests"]  # CPU utilisation is measured against the request

    monitor = one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    token = endpoint["authorization"]["credentials"]
    env = {e["name"]: e for e in container()["env"]}
    assert env["TIERGATE_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"] == token


# ---- docker-compose: the same fleet as `fleet.sh up 3` ---------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def haproxy_servers(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^\s*server\s+(\S+)\s+(\S+)", path.read_text(), re.MULTILINE))


def test_compose_runs_haproxy_in_front_of_three_replicas_redis_and_postgres() -> None:
    services = compose()["services"]
    replicas = {name: s for name, s in services.items() if name.startswith("tiergate-")}
    assert set(services) == {"haproxy", "redis", "postgres", *replicas} and len(replicas) == 3

    # HAProxy: the shared configuration plus the compose server list, published on the fleet's port.
    haproxy = services["haproxy"]
    mounts = {Path(m.split(":")[1]).name: (COMPOSE.parent / m.split(":")[0]).resolve() for m in haproxy["volumes"]}
    assert mounts["haproxy.cfg"] == HAPROXY_CFG.resolve()
    assert haproxy["ports"] == ["4400:4400"] and haproxy["environment"]["TIERGATE_LB_BIND"].endswith(":4400")
    assert [a for a in haproxy["command"] if a.startswith("/")] == [
        f"/usr/local/etc/haproxy/{name}" for name in ("haproxy.cfg", "backend.cfg")]
    servers = haproxy_servers(mounts["backend.cfg"])

    # Replicas: the fleet's policy, one per HAProxy server line, each checked on /readyz.
    ports = set()
    for service in replicas.values():
        command = service["command"]
        assert command[:3] == ["serve", "--config", "configs/fleet.yaml"]
        port = command[command.index("--port") + 1]
        ports.add(f"127.0.0.1:{port}")
        assert service["network_mode"] == "service:haproxy"
        assert {"redis", "postgres"} <= set(service["depends_on"])
        assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])
    assert ports == set(servers.values())
    assert "/readyz" in HAPROXY_CFG.read_text()

    # Redis and PostgreSQL where configs/fleet.yaml looks for them, in the same network namespace.
    metering = yaml.safe_load(FLEET_CONFIG.read_text())["metering"]
    assert metering["redis"].startswith("redis://127.0.0.1:6379/")
    assert metering["ledger"].endswith("@127.0.0.1:5432/tiergate_fleet")
    redis, postgres = services["redis"], services["postgres"]
    assert redis["network_mode"] == postgres["network_mode"] == "service:haproxy"
    assert redis["command"][redis["command"].index("--port") + 1] == "6379"
    assert postgres["environment"]["POSTGRES_DB"] == "tiergate_fleet" and "port=5432" in postgres["command"]
    assert "Dockerfile" in {s["build"]["dockerfile"] for s in replicas.values()}
    assert (COMPOSE.parent / replicas["tiergate-1"]["build"]["context"] / "configs" / "fleet.yaml").is_file()
