"""deploy/: every YAML parses, has the structure its tool expects (a hand-written minimal schema:
kubeconform/kubectl are not available here), keeps the dashboard/job API off public addresses with
token auth on, keeps secrets out of the files, and every example eva config loads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from eva.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CONFIGS = sorted((DEPLOY / "configs").glob("*.yaml"))
SECRET_VALUE = re.compile(r"(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9]{20,})")


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _require(tree: dict, dotted: str, kind: type | tuple = object):
    node = tree
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"missing {dotted}"
        node = node[key]
    assert isinstance(node, kind), f"{dotted}: expected {kind}, got {type(node).__name__}"
    return node


def _pod_templates(cluster_spec: dict) -> list[dict]:
    head = _require(cluster_spec, "headGroupSpec.template.spec", dict)
    groups = _require(cluster_spec, "workerGroupSpecs", list)
    assert groups, "no worker groups"
    return [head, *[_require(g, "template.spec", dict) for g in groups]]


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec.get("rayVersion") == "2.60.0"
    assert _require(spec, "authOptions.mode") == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"  # never LoadBalancer/NodePort
    for group in spec["workerGroupSpecs"]:
        _require(group, "groupName", str)
        assert 0 <= group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])
    for pod in _pod_templates(spec):
        containers = _require(pod, "containers", list)
        claims = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers:
            _require(c, "image", str)
            _require(c, "resources.limits", dict)
            for env in c.get("env", []):
                if env["name"].endswith(("_TOKEN", "_KEY", "_SECRET")):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{env['name']} must come from a Secret"
            assert "/mnt/shared" in {m["mountPath"] for m in c.get("volumeMounts", [])}, "run dir must be shared storage"
            for m in c.get("volumeMounts", []):
                assert m["name"] in claims, f"volumeMount {m['name']} has no volume"


def test_raycluster_manifest():
    doc = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _require(doc, "metadata.name", str)
    _check_ray_cluster_spec(_require(doc, "spec", dict))


def test_rayjob_manifest_runs_eva_on_a_valid_cluster():
    doc = _load(DEPLOY / "kuberay" / "rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = _require(doc, "spec", dict)
    assert _require(spec, "entrypoint", str).startswith(("eva run ", "eva resume "))
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode"}
    runtime_env = yaml.safe_load(_require(spec, "runtimeEnvYAML", str))
    assert not [k for k in runtime_env.get("env_vars", {}) if k.endswith(("_TOKEN", "_KEY", "_SECRET"))]
    _check_ray_cluster_spec(_require(spec, "rayClusterSpec", dict))
    # the config its entrypoint names is one of the validated examples below
    assert Path(spec["entrypoint"].split()[-1]).name in {p.name for p in CONFIGS}


def test_cluster_launcher_config():
    doc = _load(DEPLOY / "cluster-launcher.yaml")
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in doc, key
    assert doc["head_node_type"] in doc["available_node_types"]
    for name, node in doc["available_node_types"].items():
        _require(node, "node_config", dict)
        assert "resources" in node, name
    assert _require(doc, "provider.type", str)
    head = " ".join(doc["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=disabled" not in yaml.safe_dump(doc)
    assert any("ray start --address=" in c for c in doc["worker_start_ray_commands"])


def test_dockerfile_installs_gpu_eva_and_bakes_no_secrets():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM \S*vllm\S*:\S+", text, re.M)
    assert '"ray[default]==2.60.0"' in text and '".[gpu]"' in text and "[cpu]" not in text
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|_KEY|SECRET)", text, re.M)
    assert re.search(r"^USER (?!root)\S+", text, re.M)


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_no_secret_values_or_public_endpoints(path: Path):
    if not path.is_file():
        return
    text = path.read_text()
    assert not SECRET_VALUE.search(text)
    assert "LoadBalancer" not in text and "NodePort" not in text


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load_and_are_gpu_sized(path: Path):
    cfg = load_config(path, [])
    assert cfg.model.trust_remote_code is False
    assert cfg.ray.engine.num_gpus > 0 and cfg.ray.trainer.num_gpus >= 1 and cfg.ray.reward.num_gpus > 0
    assert cfg.run.run_dir.startswith("/mnt/shared/")  # shared storage, as the manifests mount it
    assert cfg.reward.kind == "reward_model" and not cfg.model.path.startswith("builtin:")
    gpus = cfg.ray.engine.num_gpus * cfg.ray.engine.replicas * cfg.model.tensor_parallel_size + cfg.ray.trainer.num_gpus + cfg.ray.reward.num_gpus + cfg.ray.creator.num_gpus
    assert gpus <= 8, f"{path.name}: {gpus} GPUs do not fit the 8-GPU node of the manifests"


def test_examples_cover_dpo_and_simpo():
    losses = {load_config(p, []).solver.loss_type for p in CONFIGS}
    assert {"sigmoid", "simpo"} <= losses
