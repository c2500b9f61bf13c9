"""The Kubernetes manifests parse and carry what the design needs."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _docs() -> dict[str, dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_worker_deployment() -> None:
    dep = _docs()["Deployment/sessionrec-worker"]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["sessionrec", "worker"]
    assert {"containerPort": 9100, "name": "metrics"} in container["ports"]
    assert any(m["mountPath"] == "/cache" for m in container["volumeMounts"])
    assert {"secretRef": {"name": "sessionrec-model-store"}} in container["envFrom"]
    assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    assert "torch" not in container["image"] and container["image"].startswith("sessionrec:")


def test_worker_probes_and_the_query_api() -> None:
    docs = _docs()
    container = docs["Deployment/sessionrec-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 8080, "name": "api"} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    env = {e["name"]: e for e in container["env"]}
    assert env["SESSIONREC_API_ADDRESS"]["value"] == "0.0.0.0"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["SESSIONREC_API_URL"]["value"] == "http://$(POD_IP):8080"  # POD_IP comes first
    assert list(env).index("POD_IP") < list(env).index("SESSIONREC_API_URL")
    assert env["SESSIONREC_API_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    service = docs["Service/sessionrec-api"]["spec"]
    assert service["selector"] == {"app": "sessionrec", "component": "worker"}
    assert service["ports"][0]["targetPort"] == "api"


def test_training_cronjob_and_the_model_store() -> None:
    docs = _docs()
    job = docs["CronJob/sessionrec-train"]
    assert len(job["spec"]["schedule"].split()) == 5
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["sessionrec", "train"] and "--announce" in container["args"]
    assert {"secretRef": {"name": "sessionrec-model-store"}} in container["envFrom"]
    assert not [d for d in docs if d.startswith("PersistentVolumeClaim/")]  # no shared volume
    config = docs["ConfigMap/sessionrec-config"]["data"]
    assert config["SESSIONREC_MODEL_DIR"].startswith("s3://") and config["SESSIONREC_BOOTSTRAP"]
    assert config["SESSIONREC_MODEL_CACHE"] == "/cache"


def test_images_and_pods_run_unprivileged() -> None:
    root = K8S.parents[1]
    stages = (root / "Dockerfile").read_text().split("\nFROM ")
    for stage in stages[1:]:  # [0]: the comments above the first FROM
        users = [line.split()[1] for line in stage.splitlines() if line.startswith("USER ")]
        assert users and users[-1] not in {"root", "0"}, stage.splitlines()[0]
    docs = _docs()
    worker = docs["Deployment/sessionrec-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["SESSIONREC_METRICS_ADDRESS"] == "0.0.0.0"  # Prometheus reaches it from outside
    job = docs["CronJob/sessionrec-train"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert job["securityContext"]["runAsNonRoot"] is True and job["securityContext"]["fsGroup"]


def test_one_way_to_torch_and_pinned_installs() -> None:
    """The Makefile and the Dockerfile get the CPU torch from one script and install from
    constraints.txt; the worker's image (service) installs neither torch nor the embedded
    broker; constraints.txt pins every dependency pyproject.toml names."""
    root = K8S.parents[1]
    makefile = (root / "Makefile").read_text()
    service, train = (root / "Dockerfile").read_text().split("\nFROM ")[1:]
    assert "deploy/install-torch.sh" in makefile and "install-torch.sh" in train
    assert "install-torch" not in service.split("COPY deploy/install-torch.sh")[1]
    installs = [line for line in service.splitlines() if "pip install" in line]
    assert installs == ["RUN pip install --no-cache-dir -c constraints.txt . \\"]
    assert "-c constraints.txt -e '.[dev]'" in makefile

    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pinned = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower().replace("_", "-")] = version
    wanted = list(project["dependencies"])
    wanted += [r for extra in project["optional-dependencies"].values() for r in extra]
    for text in wanted:
        req = Requirement(text)
        if req.name == "sessionrec":  # an extra naming the others
            continue
        version = pinned.get(req.name.lower().replace("_", "-"))
        assert version, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version}"


def _compose_commands() -> dict[str, list[str]]:
    compose = yaml.safe_load((K8S.parents[1] / "docker-compose.yml").read_text())
    return {name: s["command"] for name, s in compose["services"].items() if "command" in s}


def test_every_deployed_sessionrec_command_parses() -> None:
    """The commands compose and Kubernetes run are ones the CLI takes, flags and all."""
    from sessionrec.cli import build_parser

    commands = [c for c in _compose_commands().values() if c[0] == "sessionrec"]
    for doc in _docs().values():
        spec = doc.get("spec", {})
        pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
        commands += [c["args"] for c in pod.get("containers", []) if c.get("args")]
    assert len(commands) >= 6
    for command in commands:
        assert command[0] == "sessionrec", command
        build_parser().parse_args(command[1:])  # exits on an unknown flag


def test_a_first_model_from_history_then_nightly_training() -> None:
    """The first model comes from historical events once (--if-no-model); the nightly run
    waits for its schedule instead of training on an empty sessions topic at start."""
    compose = _compose_commands()
    assert "--if-no-model" in compose["first-model"] and "jsonl" in compose["first-model"]
    assert "--wait" in compose["trainer"] and "--every" in compose["trainer"]
    job = _docs()["Job/sessionrec-first-model"]["spec"]["template"]["spec"]["containers"][0]
    assert "--if-no-model" in job["args"] and "/history/events.jsonl" in job["args"]


def test_the_query_deployment_serves_stateless_requests_behind_its_own_service() -> None:
    docs = _docs()
    dep = docs["Deployment/sessionrec-query"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["sessionrec", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["runAsNonRoot"] is True
    service = docs["Service/sessionrec-query"]
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] != docs["Service/sessionrec-api"]["spec"]["selector"]
