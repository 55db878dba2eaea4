"""deploy/: the manifests parse and agree with each other, and a GPU step's pod, rendered by
dagster-k8s itself from the real op tags and the Helm values, asks for a GPU with the right image
and environment. No cluster needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

dagster_k8s = pytest.importorskip("dagster_k8s")  # the `k8s` extra (in `test`)
from dagster_k8s.container_context import K8sContainerContext  # noqa: E402
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402

from eliq_pipeline.definitions import ELIQ_ASSETS, defs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RELEASE = "dagster"  # `helm upgrade --install dagster ...`: the chart's fullname is then "dagster"
GPU_ASSETS = {"positive_images", "negative_images", "tuned_mllm", "aspect_embeddings"}


def load_one(path: Path) -> dict[str, Any]:
    [document] = list(yaml.safe_load_all(path.read_text()))
    return document


def code_location() -> dict[str, Any]:
    [deployment] = load_one(DEPLOY / "helm" / "values.yaml")["dagster-user-deployments"]["deployments"]
    return deployment


def pyproject(pattern: str) -> str:
    """One value of pyproject.toml (a regex group; tomllib is 3.11+, the project supports 3.10)."""
    match = re.search(pattern, (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match, pattern
    return match.group(1)


def values_image() -> str:
    image = code_location()["image"]
    return f"{image['repository']}:{image['tag']}"


def dockerfile_arg(name: str) -> str:
    match = re.search(rf'^ARG {name}="?([^"\n]+)"?$', (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert match, f"deploy/Dockerfile has no ARG {name}"
    return match.group(1)


def render_step_pod(asset: str):
    """The V1Job the k8s_job_executor would launch for `asset`'s step: the run's container context
    as the chart's code location passes it (dagsterUserDeployments.k8sContainerContext), merged with
    the step's `dagster-k8s/config` op tags as K8sStepHandler merges them, built by dagster-k8s."""
    deployment = code_location()
    tags = defs.resolve_assets_def(asset).op.tags
    run_context = K8sContainerContext.create_from_config({"k8s": {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [ref["name"] for ref in deployment.get("envConfigMaps", [])],
        "env_secrets": [ref["name"] for ref in deployment.get("envSecrets", [])],
        "env": deployment.get("env", []),
        "namespace": "eliq",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }})
    step_context = run_context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    job_config = DagsterK8sJobConfig(
        job_image=values_image(), dagster_home="/opt/dagster/dagster_home",
        instance_config_map=f"{RELEASE}-instance", postgres_password_secret=f"{RELEASE}-postgresql-secret",
        image_pull_policy=deployment["image"]["pullPolicy"],
    )
    return construct_dagster_k8s_job(
        job_config, args=["dagster", "api", "execute_step"], job_name=f"dagster-step-{asset.replace('_', '-')}",
        user_defined_k8s_config=step_context.run_k8s_config, component="step_worker",
    )


def test_every_manifest_parses():
    paths = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in paths} >= {"eliq-env.yaml", "helm/values.yaml", "ray/raycluster.yaml"}
    for path in paths:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents and all(isinstance(d, dict) for d in documents), path


def test_helm_values_deploy_this_code_location_with_the_k8s_run_launcher():
    values = load_one(DEPLOY / "helm" / "values.yaml")
    module = pyproject(r'^module_name = "([^"]+)"')  # [tool.dagster]
    deployment = code_location()
    assert values["dagster-user-deployments"]["enabled"] is True
    assert deployment["dagsterApiGrpcArgs"] == ["-m", module]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is True
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert values["dagsterDaemon"]["runMonitoring"]["freeSlotsAfterRunEndSeconds"] > 0
    assert values["concurrency"]["enabled"] is True and values["concurrency"]["pools"]["defaultLimit"] >= 1
    # the settings ConfigMap the code location reads is the one in deploy/, and it selects S3
    env_map = load_one(DEPLOY / "eliq-env.yaml")
    assert env_map["kind"] == "ConfigMap" and {"name": env_map["metadata"]["name"]} in deployment["envConfigMaps"]
    assert env_map["data"]["ELIQ_STORE"] == "s3" and env_map["data"]["ELIQ_S3_BUCKET"]


def test_raycluster_has_a_gpu_worker_group_on_the_same_image_and_ray_version():
    cluster = load_one(DEPLOY / "ray" / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    images = {c["image"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"]}
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            images.add(container["image"])
            if int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1:
                gpu_groups.append(group["groupName"])
    assert gpu_groups and images == {values_image()}
    # Ray client (the Dagster pods), head and workers must run one Ray version: the image's
    assert spec["rayVersion"] == dockerfile_arg("RAY_VERSION")
    assert spec["rayVersion"] in SpecifierSet(pyproject(r'^ray = \["ray\[[^\]]*\]([^"]+)"\]'))  # the `ray` extra
    # ELIQ_RAY_ADDRESS names this cluster's head service and client port
    address = {e["name"]: e["value"] for e in code_location()["env"]}["ELIQ_RAY_ADDRESS"]
    assert address == f"ray://{cluster['metadata']['name']}-head-svc:10001"


def test_dockerfile_installs_cuda_torch_then_the_package_and_serves_the_code_location():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cu" in dockerfile_arg("TORCH_INDEX_URL")
    torch_at, package_at = text.index('pip install "${TORCH_SPEC}"'), text.index('pip install ".[ray,k8s]"')
    assert torch_at < package_at  # so the package's torch requirement keeps the CUDA build
    assert "dagster-postgres" in text and '"-m", "eliq_pipeline.definitions"' in text


def test_gpu_step_pod_requests_a_gpu_with_the_values_image_and_env():
    assert {a.key.to_user_string() for a in ELIQ_ASSETS if "dagster-k8s/config" in a.op.tags} == GPU_ASSETS
    job = render_step_pod("aspect_embeddings")
    pod = job.spec.template.spec
    [container] = pod.containers
    print(f"\nrendered GPU step pod: image={container.image} resources={container.resources.to_dict()}")
    assert container.image == values_image()
    assert str(container.resources.limits["nvidia.com/gpu"]) == "1"
    assert str(container.resources.requests["nvidia.com/gpu"]) == "1"
    assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in pod.tolerations)
    env = {e.name: e.value for e in container.env}
    for variable in code_location()["env"]:
        assert env[variable["name"]] == variable["value"]
    assert env["ELIQ_RAY_ADDRESS"].startswith("ray://")
    sources = {(s.config_map_ref.name if s.config_map_ref else None, s.secret_ref.name if s.secret_ref else None)
               for s in container.env_from}
    assert (load_one(DEPLOY / "eliq-env.yaml")["metadata"]["name"], None) in sources
    assert (None, "eliq-secrets") in sources


def test_a_cpu_step_pod_gets_no_gpu():
    [container] = render_step_pod("qqt_model").spec.template.spec.containers
    assert container.image == values_image()
    assert "nvidia.com/gpu" not in ((container.resources.limits or {}) if container.resources else {})


def test_the_helm_values_executor_runs_each_step_in_its_own_pod():
    """The values set ELIQ_EXECUTOR=k8s; with it every job uses dagster-k8s's k8s_job_executor (the
    per-step GPU tags apply only there); unset, Dagster's default; anything else is an error."""
    from eliq_pipeline.definitions import build_definitions

    env = {"ELIQ_EXECUTOR": "k8s", "ELIQ_ERAS": str(ROOT / "eras.yaml")}
    job = build_definitions(env).resolve_job_def("eliq_job")
    assert job.executor_def.name == "k8s"
    assert build_definitions({"ELIQ_ERAS": str(ROOT / "eras.yaml")}).resolve_job_def("eliq_job").executor_def.name != "k8s"
    with pytest.raises(ValueError, match="ELIQ_EXECUTOR must be 'k8s' or unset"):
        build_definitions({"ELIQ_EXECUTOR": "celery"})
