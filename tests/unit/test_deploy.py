"""The deployment files: Dockerfile, docker-compose.yml, deploy/ (Kubernetes, Prometheus, Grafana).

Each file parses, validates against its schema and agrees with the gateway and with the others
(ports, paths, names, labels, metric names). Everything runs offline:

- Kubernetes objects: kubernetes-validate, which bundles Kubernetes' JSON schemas (strict: an
  unknown field is an error); `kubectl kustomize` renders base and overlay when kubectl is there.
- Compose: the Compose Specification schema bundled with check-jsonschema; `docker compose
  config -q` too when the docker CLI has the compose plugin.
- Prometheus: promtool from Debian's prometheus package, unpacked into a cache folder rather
  than installed (the package's install script would start a Prometheus server on :9090).
- Redis: the shipped Redis command lines (Kubernetes and Compose) run on a local redis-server:
  a password is required, and a write survives a SIGKILL (the append-only file).

`queried_metrics()` lists the metrics the dashboard and the alerts query, for other tests.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import redis as redis_client
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.cli import build_parser, cmd_fake_upstream, cmd_serve
from gateway.config import ConfigError, Settings, load_settings, parse_settings
from gateway.keys import hash_key
from gateway.testing.fake_upstream import DEFAULT_KEY

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "gateway-dashboard.json"
COMPOSE_FILES = (ROOT / "docker-compose.yml", DEPLOY / "compose" / "fake-upstream.yml")
OVERLAY = K8S / "overlays" / "example"
GATEWAY_IMAGE = "inference-gateway:local"
# The oldest Kubernetes the manifests target and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())

# What the gateway exports (README.md, "Metrics"); histograms by their base name.
EXPORTED_METRICS = frozenset(
    {
        "gateway_requests_total",
        "gateway_upstream_requests_total",
        "gateway_errors_total",
        "gateway_retries_total",
        "gateway_tokens_total",
        "gateway_spend_usd_total",
        "gateway_unpriced_tokens_total",
        "gateway_estimated_tokens_total",
        "gateway_request_duration_seconds",
        "gateway_time_to_first_token_seconds",
        "gateway_queue_wait_seconds",
        "gateway_inflight_requests",
        "gateway_queue_depth",
        "gateway_pool_limit",
        "gateway_limiter_degraded",
        "gateway_tenant_budget_usd",
        "gateway_tenant_month_spend_usd",
    }
)
_METRIC_RE = re.compile(r"gateway_[a-z_]+")
_HISTOGRAM_SUFFIX_RE = re.compile(r"_(bucket|count|sum)$")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
REDIS_PASSWORD = "0123456789abcdef"  # what the tests' environment gives REDIS_PASSWORD


# ---- shared readers ------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def dashboard_queries() -> list[str]:
    """Every PromQL string of the dashboard: panel targets and template variable queries."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def queried_metrics() -> set[str]:
    """The gateway metrics the Grafana dashboard and the alert rules query, by exported name
    (histograms without their _bucket/_count/_sum suffix)."""
    exprs = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    return {_HISTOGRAM_SUFFIX_RE.sub("", m) for expr in exprs for m in _METRIC_RE.findall(expr)}


def required_vars(config: Path) -> set[str]:
    """`${VAR}`s of a gateway config that have no default (comments aside)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.update(m.group(1) for m in _VAR_RE.finditer(node) if m.group(2) is None)
        elif isinstance(node, dict | list):
            for item in node.values() if isinstance(node, dict) else node:
                walk(item)

    walk(load_yaml(config))
    return found


def models_of(path: Path) -> Any:
    return load_yaml(path)["models"]


# ---- the Dockerfile ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int  # -1 before the first FROM
    keyword: str
    args: str


@cache
def dockerfile() -> tuple[Instruction, ...]:
    logical: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out: list[Instruction] = []
    stage = -1
    for text in logical:
        keyword, _, args = text.partition(" ")
        stage += keyword.upper() == "FROM"
        out.append(Instruction(stage, keyword.upper(), args.strip()))
    return tuple(out)


def final(keyword: str) -> list[Instruction]:
    last = max(i.stage for i in dockerfile())
    return [i for i in dockerfile() if i.keyword == keyword and i.stage == last]


def exec_form(keyword: str) -> list[str]:
    (instruction,) = final(keyword)
    argv = json.loads(instruction.args)
    assert isinstance(argv, list), f"{keyword} must use the exec form"
    return [str(a) for a in argv]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in final("ENV"):
        for item in shlex.split(instruction.args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def healthcheck_argv() -> list[str]:
    (instruction,) = final("HEALTHCHECK")
    _, _, command = instruction.args.partition("CMD ")
    return [str(a) for a in json.loads(command)]


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    args = {
        name: value
        for i in dockerfile()
        if i.keyword == "ARG" and "=" in i.args
        for name, value in [i.args.split("=", 1)]
    }
    froms = [i.args.split()[0] for i in dockerfile() if i.keyword == "FROM"]
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f) for f in froms]
    assert len(images) >= 2
    assert set(images) == {"python:3.11-slim"}
    assert any(i.keyword == "COPY" and "--from=" in i.args for i in final("COPY"))


def test_dockerfile_installs_the_pinned_dependencies_before_the_code() -> None:
    steps = [(i.keyword, i.args) for i in dockerfile() if i.stage == 0]
    installs = [n for n, (k, a) in enumerate(steps) if k == "RUN" and "-c constraints.txt" in a]
    code = [n for n, (k, a) in enumerate(steps) if k == "COPY" and a.split()[0] == "gateway"]
    constraints = [n for n, (k, a) in enumerate(steps) if k == "COPY" and "constraints.txt" in a]
    assert constraints and installs and code
    assert constraints[0] < installs[0] < code[0]


def test_dockerfile_dependency_list_is_the_runtime_dependencies() -> None:
    """The RUN that lists the dependencies prints pyproject.toml's, nothing else."""
    run = next(i.args for i in dockerfile() if i.keyword == "RUN" and "tomllib" in i.args)
    words = shlex.split(run)
    code = words[words.index("-c") + 1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out.stdout.split() == expected


def test_image_runs_as_non_root_with_config_from_a_mounted_file() -> None:
    (user,) = final("USER")
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root uid (runAsNonRoot can check it)"
    assert image_env()["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml"
    assert [i.args for i in final("EXPOSE")] == ["8080"]
    secret_words = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)
    assert not [name for name in image_env() if secret_words.search(name)]
    assert not [i for i in dockerfile() if i.keyword == "ARG" and secret_words.search(i.args)]


def test_entrypoint_is_inference_gateway_serve_on_all_interfaces() -> None:
    argv = exec_form("ENTRYPOINT") + exec_form("CMD")
    assert argv[0] == "inference-gateway"
    args = build_parser().parse_args(argv[1:])
    assert args.func is cmd_serve
    assert (args.host, args.port) == ("0.0.0.0", 8080)
    assert args.config is None  # so serve reads $GATEWAY_CONFIG


def test_entrypoint_command_runs() -> None:
    argv = exec_form("ENTRYPOINT") + exec_form("CMD")
    program = Path(sys.executable).parent / argv[0]
    done = subprocess.run(
        [str(program), *argv[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--host" in done.stdout and "--port" in done.stdout


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_healthcheck_polls_healthz_with_python_only() -> None:
    argv = healthcheck_argv()
    assert argv[0] == "python", "the slim image has no curl"
    assert "http://127.0.0.1:8080/healthz" in argv[-1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    port = server.server_address[1]
    command = [sys.executable, *argv[1:-1], argv[-1].replace(":8080/", f":{port}/")]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        healthy = subprocess.run(command, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert healthy.returncode == 0, healthy.stderr
    refused = subprocess.run(command, capture_output=True, timeout=30)
    assert refused.returncode != 0


def test_dockerignore_keeps_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", "exclude everything (keys, .venv, config/*.keys), then re-include"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        src.rstrip("/")
        for i in dockerfile()
        if i.keyword == "COPY" and "--from=" not in i.args
        for src in i.args.split()[:-1]
    }
    assert copied == kept
    for path in copied:
        assert (ROOT / path).exists(), path


# ---- docker-compose.yml --------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")  # type: ignore[no-any-return]


def gateway_services() -> dict[str, Any]:
    return {n: s for n, s in compose()["services"].items() if s.get("image") == GATEWAY_IMAGE}


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the project folder) of the ./ bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            out[target] = source[2:]
    return out


def test_compose_files_match_the_compose_specification() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(f) for f in COMPOSE_FILES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.parametrize("files", [COMPOSE_FILES[:1], COMPOSE_FILES], ids=["wandb", "fake"])
def test_docker_compose_config(files: tuple[Path, ...]) -> None:
    if not _docker_compose_available():
        pytest.skip("the docker CLI here has no compose plugin (the schema test still runs)")
    argv = ["docker", "compose", "--project-directory", str(ROOT)]
    for f in files:
        argv += ["-f", str(f)]
    done = subprocess.run([*argv, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_runs_two_gateway_replicas_behind_one_port() -> None:
    gateways = gateway_services()
    assert len(gateways) == 2
    first, second = gateways.values()
    assert first == second, "replicas of one service"
    config_path = image_env()["GATEWAY_CONFIG"]
    for service in gateways.values():
        assert bind_mounts(service)[config_path] == "deploy/compose/gateway.yaml"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "command" not in service, "the image's entry point: serve on 0.0.0.0:8080"
        assert "ports" not in service, "reached only through the load balancer"
    published = [s for s in compose()["services"].values() if s.get("ports")]
    lb = compose()["services"]["lb"]
    assert lb["ports"] == ["${GATEWAY_BIND:-127.0.0.1}:${GATEWAY_PORT:-8080}:8080"]
    assert set(lb["depends_on"]) == set(gateways)
    assert all(p["ports"][0].startswith(("127.0.0.1:", "${GATEWAY_BIND")) for p in published)


def test_load_balancer_spreads_over_the_replicas_and_does_not_buffer_streams() -> None:
    lb = compose()["services"]["lb"]
    conf_path = bind_mounts(lb)["/etc/nginx/conf.d/default.conf"]
    conf = (ROOT / conf_path).read_text()
    conf = "\n".join(line.split("#")[0] for line in conf.splitlines())
    upstream = re.search(r"upstream gateway \{(.*?)\}", conf, re.S)
    assert upstream
    servers = set(re.findall(r"server\s+([\w.-]+:\d+)", upstream.group(1)))
    assert servers == {f"{name}:8080" for name in gateway_services()}
    assert re.search(r"listen 8080;", conf)
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", "proxy_cache off;"):
        assert directive in conf
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", conf)
    gateway = load_settings(ROOT / "deploy/compose/gateway.yaml", env=_compose_env())
    assert read_timeout and int(read_timeout.group(1)) > gateway.upstream.read_timeout_s


def test_compose_monitoring_scrapes_every_replica_and_provisions_grafana() -> None:
    services = compose()["services"]
    prom_dir = bind_mounts(services["prometheus"])["/etc/prometheus"]
    assert prom_dir == "deploy/prometheus"
    prom = load_yaml(ROOT / prom_dir / "prometheus.yml")
    assert [ROOT / prom_dir / f for f in prom["rule_files"]] == [RULES]
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "inference-gateway"  # the alerts' job; Kubernetes' Service name
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:8080" for name in gateway_services()}

    grafana = bind_mounts(services["grafana"])
    assert grafana["/etc/grafana/dashboards/gateway-dashboard.json"] == str(
        DASHBOARD.relative_to(ROOT)
    )
    providers = load_yaml(
        ROOT / grafana["/etc/grafana/provisioning/dashboards"] / "inference-gateway.yml"
    )
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    datasources = load_yaml(
        ROOT / grafana["/etc/grafana/provisioning/datasources"] / "prometheus.yml"
    )
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    assert "redis" in services


def test_compose_bind_mounts_exist() -> None:
    for file in COMPOSE_FILES:
        for name, service in load_yaml(file)["services"].items():
            for host_path in bind_mounts(service).values():
                assert (ROOT / host_path).exists(), f"{file.name}: {name}: {host_path}"


def _compose_env(**extra: str) -> dict[str, str]:
    return {
        "WANDB_API_KEY": "wandb-key",
        "GATEWAY_KEY_HASH": hash_key("sk-gw-test"),
        "REDIS_PASSWORD": REDIS_PASSWORD,
        **extra,
    }


def test_compose_gateway_config_shares_redis_and_takes_secrets_from_the_environment() -> None:
    path = ROOT / "deploy/compose/gateway.yaml"
    settings = load_settings(path, env=_compose_env())
    assert settings.limiter.backend == "redis"
    assert settings.limiter.redis_url == f"redis://:{REDIS_PASSWORD}@redis:6379/0"
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8080)
    assert settings.accounts["main"].api_key == "wandb-key"
    assert models_of(path) == models_of(ROOT / "config/gateway.yaml"), "same price table"
    example = "".join(
        (DEPLOY / f"compose/{name}.env.example").read_text() for name in ("gateway", "redis")
    )
    for name in required_vars(path):
        assert re.search(rf"^{name}=", example, re.M), f"{name} missing from the .env.examples"
    with pytest.raises(ConfigError, match="GATEWAY_KEY_HASH"):
        load_settings(path, env={"WANDB_API_KEY": "wandb-key"})


def test_fake_upstream_override_swaps_wandb_for_the_bundled_fake() -> None:
    override = load_yaml(COMPOSE_FILES[1])["services"]
    fake = override["fake-upstream"]
    assert fake["image"] == GATEWAY_IMAGE
    args = build_parser().parse_args(fake["command"])
    assert args.func is cmd_fake_upstream
    assert (args.host, args.port) == ("0.0.0.0", 9090)
    assert "9090" in fake["healthcheck"]["test"][-1]
    assert set(override) - {"fake-upstream"} == set(gateway_services())
    for name in gateway_services():
        env = override[name]["environment"]
        assert env["WANDB_BASE_URL"] == f"http://fake-upstream:{args.port}/v1"
        assert env["WANDB_API_KEY"] == DEFAULT_KEY
        assert override[name]["depends_on"]["fake-upstream"]["condition"] == "service_healthy"
        settings = load_settings(ROOT / "deploy/compose/gateway.yaml", env=_compose_env(**env))
        assert settings.upstream.base_url == env["WANDB_BASE_URL"]


def test_no_gateway_key_or_key_hash_is_shipped() -> None:
    """A hash whose key is written down anywhere is a working credential: ship none at all."""
    files = [ROOT / "Dockerfile", ROOT / "docker-compose.yml"]
    # deploy/compose/gateway.env is the operator's own (git-ignored), not shipped.
    files += [
        p for p in DEPLOY.rglob("*") if p.is_file() and p.name not in ("gateway.env", "redis.env")
    ]
    for file in files:
        text = file.read_text()
        assert not re.search(r"sha256:[0-9a-fA-F]{64}", text), file
        assert not re.search(r"sk-gw-[A-Za-z0-9_-]{8,}", text), file


# ---- Kubernetes ----------------------------------------------------------------------------


def kustomization(folder: Path) -> dict[str, Any]:
    return load_yaml(folder / "kustomization.yaml")  # type: ignore[no-any-return]


def resource_files(folder: Path) -> Iterator[Path]:
    for entry in kustomization(folder).get("resources", []):
        path = (folder / entry).resolve()
        yield from resource_files(path) if path.is_dir() else [path]


@cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    """Every object of the example overlay (base and monitoring included) and the example Secret."""
    files = [*resource_files(OVERLAY), K8S / "base/secret.example.yaml"]
    return tuple(doc for f in files for doc in load_docs(f))


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def validate_k8s(obj: dict[str, Any]) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        return  # no bundled CRD schema: checked below (rules == rules.yml, promtool, selectors)
    for version in K8S_VERSIONS:
        problem = None
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            where = ".".join(str(p) for p in exc.path)
            problem = f"{name} (Kubernetes {version}): {where}: {exc.message}"
        if problem:
            pytest.fail(problem, pytrace=False)


def test_k8s_manifests_validate_against_the_kubernetes_schemas() -> None:
    kinds = set()
    for obj in k8s_objects():
        validate_k8s(obj)
        kinds.add(obj["kind"])
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds


def test_kustomizations_reference_what_exists() -> None:
    folders = [p.parent for p in K8S.rglob("kustomization.yaml")]
    assert {K8S / "base", K8S / "monitoring", OVERLAY} <= set(folders)
    names = {(o["kind"], o["metadata"]["name"]) for o in k8s_objects()}
    containers = {
        c["image"]
        for o in k8s_objects()
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    for folder in folders:
        k = kustomization(folder)
        for entry in k.get("resources", []):
            target = folder / entry
            assert target.is_file() or (target / "kustomization.yaml").is_file(), target
        for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            for file in generator.get("files", []):
                assert (folder / file.split("=")[-1]).is_file(), file
        for patch in k.get("patches", []):
            patch_file = folder / patch["path"]
            assert patch_file.is_file(), patch_file
            target = patch.get("target") or load_yaml(patch_file)
            name = target.get("name") or target["metadata"]["name"]
            kind = target.get("kind")
            assert any(n == name and kind in (None, k_) for k_, n in names), patch
        for image in k.get("images", []):
            assert image["name"] in containers, image


@pytest.fixture(scope="module")
def kustomize_builds() -> dict[str, list[dict[str, Any]]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not found: the files are still validated one by one")
    out = {}
    for folder in (K8S / "base", OVERLAY):
        done = subprocess.run(
            ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        out[folder.name] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return out


def test_kustomize_builds_validate(kustomize_builds: dict[str, list[dict[str, Any]]]) -> None:
    for objects in kustomize_builds.values():
        for obj in objects:
            validate_k8s(obj)
    overlay = kustomize_builds["example"]
    for obj in overlay:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "inference-gateway", obj["metadata"]
    (deployment,) = [
        o
        for o in overlay
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "inference-gateway"
    ]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/platform/inference-gateway:0.1.0"
    (config_map,) = [o for o in overlay if o["kind"] == "ConfigMap"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]  # hash suffix followed
    settings = parse_settings(yaml.safe_load(config_map["data"]["gateway.yaml"]), env=_k8s_env())
    assert settings.limiter.backend == "redis"
    (redis,) = [
        o
        for o in overlay
        if o["metadata"]["name"] == "inference-gateway-redis" and o["kind"] == "StatefulSet"
    ]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    for obj in overlay:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _k8s_env() -> dict[str, str]:
    return {
        "WANDB_API_KEY": "wandb-key",
        "WANDB_PROJECT": "acme/gateway",
        "GATEWAY_KEY_HASH": hash_key("sk-gw-test"),
        "REDIS_PASSWORD": REDIS_PASSWORD,
    }


def gateway_pod() -> dict[str, Any]:
    return k8s_object("Deployment", "inference-gateway")["spec"]["template"]  # type: ignore[no-any-return]


def test_gateway_deployment_is_production_shaped() -> None:
    deployment = k8s_object("Deployment", "inference-gateway")
    assert deployment["spec"]["replicas"] == 3
    pod = gateway_pod()["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    (port,) = container["ports"]
    assert port["containerPort"] == build_parser().parse_args(exec_form("CMD")).port
    # Long streams finish before SIGKILL; the preStop sleep lets the endpoint leave first.
    assert pod["terminationGracePeriodSeconds"] >= 120
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and 5 <= int(sleep[1]) < pod["terminationGracePeriodSeconds"] / 4


def assert_restricted(pod: dict[str, Any], claims: frozenset[str] = frozenset()) -> None:
    """A restricted pod; only its emptyDirs and the volume `claims` (its StatefulSet's
    volumeClaimTemplates) are writable."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v} | claims
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        writable = {m["name"] for m in container.get("volumeMounts", []) if not m.get("readOnly")}
        assert writable <= tmp_volumes


def test_pods_run_restricted() -> None:
    pod = gateway_pod()["spec"]
    assert_restricted(pod)
    (user,) = final("USER")
    assert pod["securityContext"]["runAsUser"] == int(user.args.split(":")[0])
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert mounts["/tmp"] in emptydirs
    assert pod["automountServiceAccountToken"] is False
    redis = k8s_object("StatefulSet", "inference-gateway-redis")["spec"]
    claims = frozenset(c["metadata"]["name"] for c in redis["volumeClaimTemplates"])
    assert_restricted(redis["template"]["spec"], claims)


def test_gateway_config_secret_and_deployment_agree() -> None:
    (container,) = gateway_pod()["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    config_path = Path(env["GATEWAY_CONFIG"])
    assert str(config_path) == image_env()["GATEWAY_CONFIG"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (volume,) = [
        v for v in gateway_pod()["spec"]["volumes"] if v["name"] == mounts[str(config_path.parent)]
    ]
    (generator,) = kustomization(K8S / "base")["configMapGenerator"]
    assert volume["configMap"]["name"] == generator["name"]
    assert generator["files"] == [config_path.name]

    config = K8S / "base" / config_path.name
    secret = k8s_object("Secret", "inference-gateway-secrets")
    (secret_ref,) = container["envFrom"]
    assert secret_ref["secretRef"]["name"] == secret["metadata"]["name"]
    assert required_vars(config) <= set(secret["stringData"]) | set(env)
    assert all(v.startswith("REPLACE") for v in secret["stringData"].values()), "placeholders"
    with pytest.raises(ConfigError):  # placeholders are refused, never half-working
        load_settings(config, env=secret["stringData"])

    settings: Settings = load_settings(config, env=_k8s_env())
    assert settings.limiter.backend == "redis"
    redis_service = k8s_object("Service", "inference-gateway-redis")
    port = redis_service["spec"]["ports"][0]["port"]
    host = redis_service["metadata"]["name"]
    assert settings.limiter.redis_url == f"redis://:{REDIS_PASSWORD}@{host}:{port}/0"
    assert models_of(config) == models_of(ROOT / "config/gateway.yaml"), "same price table"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_pdb_hpa_and_servicemonitor_point_at_the_gateway() -> None:
    pod_labels = gateway_pod()["metadata"]["labels"]
    service = k8s_object("Service", "inference-gateway")
    assert selects(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == gateway_pod()["spec"]["containers"][0]["ports"][0]["name"]
    pdb = k8s_object("PodDisruptionBudget", "inference-gateway")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    hpa = k8s_object("HorizontalPodAutoscaler", "inference-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "inference-gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 3
    redis_pod = k8s_object("StatefulSet", "inference-gateway-redis")["spec"]["template"]
    assert not selects(service["spec"]["selector"], redis_pod["metadata"]["labels"])

    monitor = k8s_object("ServiceMonitor", "inference-gateway")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not selects(
        monitor["spec"]["selector"]["matchLabels"], {"app.kubernetes.io/component": "redis"}
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    # The Operator's job label is the Service's name, which GatewayReplicaDown expects.
    assert service["metadata"]["name"] == "inference-gateway"


def test_prometheusrule_is_the_rules_file() -> None:
    rule = k8s_object("PrometheusRule", "inference-gateway")
    assert rule["spec"] == load_yaml(RULES), (
        "deploy/k8s/monitoring/prometheusrule.yaml drifted from deploy/prometheus/rules.yml: "
        "run deploy/deploy-check sync-rules"
    )


# ---- Redis: the month's spend survives a restart ---------------------------------------------

REDIS_DURABLE = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}


def redis_options(argv: list[str]) -> dict[str, str]:
    """`--name value` pairs of a redis-server command line, the last one of a name winning."""
    options = {}
    for i, word in enumerate(argv):
        if word.startswith("--") and i + 1 < len(argv):
            options[word[2:]] = argv[i + 1]
    return options


def k8s_redis() -> dict[str, Any]:
    return k8s_object("StatefulSet", "inference-gateway-redis")  # type: ignore[no-any-return]


def compose_redis_script() -> str:
    """The shell script the compose Redis runs, as the container's shell sees it ($$ is $)."""
    command = compose()["services"]["redis"]["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2]).replace("$$", "$")


def test_k8s_redis_asks_for_the_secrets_password_and_keeps_its_data() -> None:
    redis = k8s_redis()["spec"]
    (container,) = redis["template"]["spec"]["containers"]
    secret = k8s_object("Secret", "inference-gateway-secrets")
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):  # the server's and the probe's
        assert env[name] == {"name": secret["metadata"]["name"], "key": "REDIS_PASSWORD"}
    assert "REDIS_PASSWORD" in secret["stringData"]
    assert "envFrom" not in container, "Redis gets its password, not the W&B key"
    options = redis_options(container["args"])
    assert options["requirepass"] == "$(REDIS_PASSWORD)"  # expanded by Kubernetes
    assert REDIS_DURABLE.items() <= options.items()
    assert options.get("save") != "", "no option turns persistence off"
    (mount,) = container["volumeMounts"]
    assert (mount["mountPath"], options["dir"]) == ("/data", "/data")
    (claim,) = redis["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "volumes" not in redis["template"]["spec"], "no emptyDir: the claim holds /data"
    assert "redis-cli ping" in " ".join(container["readinessProbe"]["exec"]["command"])


def test_k8s_gateway_reaches_redis_with_the_secrets_password() -> None:
    config = K8S / "base" / "gateway.yaml"
    raw_url = load_yaml(config)["limiter"]["redis_url"]
    assert "${REDIS_PASSWORD}@" in raw_url and "REDIS_PASSWORD" in required_vars(config)
    (container,) = gateway_pod()["spec"]["containers"]
    (secret_ref,) = container["envFrom"]  # REDIS_PASSWORD among the Secret's keys
    assert secret_ref["secretRef"]["name"] == "inference-gateway-secrets"
    assert "REDIS_PASSWORD" in k8s_object("Secret", "inference-gateway-secrets")["stringData"]
    managed = load_settings(
        config,
        env={
            **_k8s_env(),
            "REDIS_SCHEME": "rediss",
            "REDIS_HOST": "redis.example.com",
            "REDIS_PORT": "6380",
        },
    )
    assert managed.limiter.redis_url == f"rediss://:{REDIS_PASSWORD}@redis.example.com:6380/0"
    assert REDIS_PASSWORD not in repr(managed.limiter)
    with pytest.raises(ConfigError, match="REDIS_PASSWORD"):
        load_settings(config, env={k: v for k, v in _k8s_env().items() if k != "REDIS_PASSWORD"})


def test_compose_redis_asks_for_the_env_files_password_and_keeps_its_data() -> None:
    redis = compose()["services"]["redis"]
    env_files = [f["path"] if isinstance(f, dict) else f for f in redis["env_file"]]
    assert env_files == ["deploy/compose/redis.env"]  # its own: Redis never sees the W&B key
    example = (DEPLOY / "compose/redis.env.example").read_text()
    assert re.search(r"^REDIS_PASSWORD=$", example, re.M)
    assert "REDIS_PASSWORD" not in (DEPLOY / "compose/gateway.env.example").read_text()
    gateway = compose()["services"]["gateway-1"]
    assert [f["path"] for f in gateway["env_file"]] == [
        "deploy/compose/gateway.env",
        "deploy/compose/redis.env",
    ]
    script = compose_redis_script()
    assert "${REDIS_PASSWORD:?" in script, "no password, no Redis"
    argv = shlex.split(script.split("exec ", 1)[1])
    assert argv[0] == "redis-server"
    options = redis_options(argv)
    assert options["requirepass"] == "${REDIS_PASSWORD}"
    assert REDIS_DURABLE.items() <= options.items()
    assert options.get("save") != ""
    volumes = {v.split(":")[1]: v.split(":")[0] for v in redis["volumes"]}
    assert volumes["/data"] in compose()["volumes"], "a named volume, not the container's layer"
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1]
    raw_url = load_yaml(DEPLOY / "compose/gateway.yaml")["limiter"]["redis_url"]
    assert raw_url == "redis://:${REDIS_PASSWORD}@redis:6379/0"


def _port_free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stack", ["k8s", "compose"])
def test_spend_survives_a_redis_crash(stack: str, tmp_path: Path) -> None:
    """The shipped Redis command line, run here: a write is on disk within a second (the
    append-only file), a SIGKILL loses nothing older, and a client without the password gets in
    nowhere."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make test` installs Debian's package)")
    port = _port_free()
    local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    env = {**os.environ, "REDIS_PASSWORD": REDIS_PASSWORD}
    if stack == "k8s":
        (container,) = k8s_redis()["spec"]["template"]["spec"]["containers"]
        args = [a.replace("$(REDIS_PASSWORD)", REDIS_PASSWORD) for a in container["args"]]
        args = [str(tmp_path) if a == "/data" else a for a in args]  # its volume, here
        argv = ["redis-server", *args, *local]
    else:
        argv = ["sh", "-c", compose_redis_script() + " " + shlex.join(local)]
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={})
        assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis_client.Redis(port=port, password=REDIS_PASSWORD, socket_timeout=1)
        for _ in range(100):
            try:
                if client.ping():
                    return proc
            except redis_client.ConnectionError:
                threading.Event().wait(0.05)
        proc.kill()
        raise AssertionError("redis-server did not start")

    proc = start()
    try:
        client = redis_client.Redis(port=port, password=REDIS_PASSWORD)
        client.hset("igw:usage:2026-12:default", mapping={"spend_usd": "1.25"})
        stranger = redis_client.Redis(port=port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis_client.AuthenticationError):
            stranger.get("igw:usage:2026-12:default")
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        threading.Event().wait(1.5)  # appendfsync everysec
    finally:
        proc.kill()  # no shutdown, no snapshot: only the append-only file remains
        proc.wait()
    proc = start()
    try:
        client = redis_client.Redis(port=port, password=REDIS_PASSWORD)
        assert client.hget("igw:usage:2026-12:default", "spend_usd") == b"1.25"
    finally:
        proc.terminate()
        proc.wait()


# ---- alerts and dashboard ------------------------------------------------------------------


def test_queried_metrics_are_exported() -> None:
    queried = queried_metrics()
    assert queried - EXPORTED_METRICS == set()
    dashboard = {
        _HISTOGRAM_SUFFIX_RE.sub("", m) for q in dashboard_queries() for m in _METRIC_RE.findall(q)
    }
    assert {
        "gateway_spend_usd_total",
        "gateway_requests_total",
        "gateway_errors_total",
        "gateway_inflight_requests",
        "gateway_pool_limit",
        "gateway_queue_depth",
        "gateway_queue_wait_seconds",
        "gateway_time_to_first_token_seconds",
        "gateway_retries_total",
        "gateway_tokens_total",
    } <= dashboard


def _flat(expr: str) -> str:
    return " ".join(expr.split())


def test_alerts_cover_what_pages_someone() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    ratio = _flat(rules["GatewayModelErrorRatioHigh"]["expr"])
    errors = r"sum by \(model\) \(rate\(gateway_errors_total\{.*\}\[5m\]\)\)"
    requests = r"sum by \(model\) \(rate\(gateway_requests_total\[5m\]\)\)"
    assert re.search(rf"{errors} / {requests} > 0\.\d+", ratio)
    assert 'reason="queue_timeout"' in rules["GatewayQueueTimeouts"]["expr"]
    assert _flat(rules["GatewayLimiterDegraded"]["expr"]) == "gateway_limiter_degraded == 1"
    assert (
        "histogram_quantile(0.99, sum by (le, model) "
        "(rate(gateway_time_to_first_token_seconds_bucket[5m])))"
    ) in _flat(rules["GatewayTimeToFirstTokenSlow"]["expr"])
    budget = _flat(rules["GatewayTenantBudget80Percent"]["expr"])
    assert re.fullmatch(
        r".*gateway_tenant_month_spend_usd.* / .*gateway_tenant_budget_usd.* > 0\.8", budget
    )
    auth = rules["GatewayUpstreamAuthFailing"]
    assert 'reason="upstream_auth"' in auth["expr"] and "increase(" in auth["expr"]
    assert auth["labels"]["severity"] == "critical" and "for" not in auth


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert grid["x"] + grid["w"] <= 24 and not area & cells, panel["title"]
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert _METRIC_RE.search(target["expr"]), panel["title"]


# ---- promtool ------------------------------------------------------------------------------

PROMTOOL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / (
    "inference-gateway/promtool"
)


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from PATH, else from Debian's prometheus package, fetched with apt-get and
    unpacked (not installed: its postinst starts a Prometheus server on :9090)."""
    found = shutil.which("promtool")
    cached = PROMTOOL_CACHE / "usr/bin/promtool"
    if found or cached.exists():
        return found or str(cached)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("promtool not found and no apt-get to fetch Debian's prometheus package")
    if os.geteuid() != 0:
        pytest.skip("promtool not found: install Debian's prometheus package, or run as root")
    download = PROMTOOL_CACHE.parent / "download"
    download.mkdir(parents=True, exist_ok=True)
    fetch = ["apt-get", "download", "-q", "prometheus"]
    done = subprocess.run(fetch, cwd=download, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:  # no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        done = subprocess.run(fetch, cwd=download, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"could not fetch Debian's prometheus package: {done.stderr.strip()}")
    (deb,) = download.glob("prometheus_*.deb")
    unpacked = PROMTOOL_CACHE.with_name("promtool.partial")
    shutil.rmtree(unpacked, ignore_errors=True)
    unpacked.mkdir(parents=True)
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(
        ["tar", "-x", "-C", str(unpacked), "./usr/bin/promtool"], stdin=tar.stdout, check=True
    )
    assert tar.stdout is not None
    tar.stdout.close()
    assert tar.wait() == 0
    unpacked.rename(PROMTOOL_CACHE)
    shutil.rmtree(download)
    return str(cached)


def run_promtool(promtool: str, *args: str, cwd: Path = ROOT) -> None:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules_and_their_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", str(RULES))
    run_promtool(promtool, "test", "rules", "rules.test.yml", cwd=RULES.parent)
    run_promtool(promtool, "check", "config", "prometheus.yml", cwd=RULES.parent)


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    grafana_vars = {"$__rate_interval": "5m", "$__range": "1h"}
    records = []
    for n, query in enumerate(dashboard_queries()):
        if query.startswith("label_values("):
            continue
        for name, value in grafana_vars.items():
            query = query.replace(name, value)
        records.append({"record": f"dashboard:query_{n}", "expr": re.sub(r"\$\w+", ".*", query)})
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    run_promtool(promtool, "check", "rules", str(rules))
