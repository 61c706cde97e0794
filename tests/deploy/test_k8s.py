"""The k8s/ overlays: each renders with `kubectl kustomize`, passes `kubernetes-validate --strict` for
Kubernetes 1.31 and the newest version it knows, and keeps the promises the job and the image rely on:
the exit codes that fail a Job at once, the run id, the user and the writable paths of the image, and
names that stay consistent when kustomize prefixes them.
"""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import skip_or_fail
from job import errors
from support.kube import K8S, OVERLAYS, ROOT, expand, find, job_pod, job_pod_labels, kubectl, render

VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
FATAL_EXIT_CODES = {errors.EXIT_USAGE, errors.EXIT_CONFIG, errors.EXIT_DATA, errors.EXIT_MODEL}
RETRIED_EXIT_CODES = {errors.EXIT_INTERNAL, errors.EXIT_STORAGE, errors.EXIT_INTERRUPTED}
SECRET_EXAMPLE = K8S / "s3-secret.example.yaml"


@pytest.fixture(autouse=True)
def _needs_kubectl():
    if kubectl() is None:
        skip_or_fail("kubectl is not installed (it renders the kustomize overlays)")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS} | {"base": render(K8S / "base")}


def validate(documents: list[dict], version: str) -> subprocess.CompletedProcess:
    """`kubernetes-validate --strict`: unknown fields are errors, not ignored."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet", "-k", version, "-"],
        input=yaml.safe_dump_all(documents), capture_output=True, text=True, timeout=120,
    )


def job_spec(objects: list[dict]) -> dict:
    """The Job spec an overlay creates: the Job's own, or the CronJob's template."""
    kinds = {o["kind"] for o in objects}
    return find(objects, "CronJob")["spec"]["jobTemplate"]["spec"] if "CronJob" in kinds else find(objects, "Job")["spec"]


def dockerfile_final_stage() -> tuple[dict[str, str], str]:
    """ENV and USER of the image's last stage, read from docker/Dockerfile."""
    text = (ROOT / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
    env, user = {}, ""
    for line in last_stage:
        word, _, rest = line.partition(" ")
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
        elif word == "USER":
            user = rest.strip()
    return env, user


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_overlay_passes_strict_validation(rendered, overlay, version):
    proc = validate(rendered[overlay], version)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_example_secret_passes_strict_validation(version):
    proc = validate(list(yaml.safe_load_all(SECRET_EXAMPLE.read_text())), version)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_strict_validation_rejects_a_misspelled_field(rendered):
    documents = copy.deepcopy(rendered["local-cpu"])
    pod = find(documents, "Job")["spec"]["template"]["spec"]
    pod["restartPolicyy"] = pod.pop("restartPolicy")
    proc = validate(documents, VERSIONS[0])
    assert proc.returncode != 0 and "restartPolicyy" in proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_failure_policy_matches_the_exit_codes(rendered, overlay):
    spec = job_spec(rendered[overlay])
    container = spec["template"]["spec"]["containers"][0]
    rules = spec["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail_job) == 1
    assert fail_job[0]["onExitCodes"]["operator"] == "In"
    assert fail_job[0]["onExitCodes"]["containerName"] == container["name"]
    assert set(fail_job[0]["onExitCodes"]["values"]) == FATAL_EXIT_CODES
    assert not RETRIED_EXIT_CODES & set(fail_job[0]["onExitCodes"]["values"])
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_run_id_is_the_job_name(rendered, overlay):
    spec = job_spec(rendered[overlay])
    job = {"metadata": {"name": "nightly-29012345"}, "spec": spec}  # any name the Job (or CronJob) gets
    env = job_pod(job, rendered[overlay], {example_secret_name(): example_secret()}).env(spec["template"]["spec"]["containers"][0])
    assert env["FINETUNE_RUN_ID"] == "nightly-29012345"
    assert env["FINETUNE_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_as_the_image_user_with_a_read_only_root(rendered, overlay):
    objects = rendered[overlay]
    pod = job_spec(objects)["template"]["spec"]
    container = pod["containers"][0]
    _, image_user = dockerfile_final_stage()
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and f"{context['runAsUser']}:{context['runAsGroup']}" == image_user
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}
    }
    assert pod["automountServiceAccountToken"] is False
    account = find(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] >= 120  # a checkpoint save and upload after SIGTERM
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_path_the_image_writes_is_a_volume(rendered, overlay):
    pod = job_spec(rendered[overlay])["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    image_env, _ = dockerfile_final_stage()
    for variable in ("TMPDIR", "HOME", "XDG_CACHE_HOME", "HF_HOME"):
        path = image_env[variable]
        assert any(path == m or path.startswith(m + "/") for m in writable), f"{variable}={path} is on the read-only root"
    assert "/tmp/cache" in writable  # HF_HOME's own volume: downloads do not share the scratch limit


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves_within_the_overlay(rendered, overlay):
    objects = rendered[overlay]
    pod = job_spec(objects)["template"]["spec"]
    container = pod["containers"][0]
    configmaps = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    configmaps += [s["configMapRef"]["name"] for s in container.get("envFrom", [])]
    for name in configmaps:
        find(objects, "ConfigMap", name)
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {example_secret_name()}  # the Secret the README tells users to create


def test_local_cpu_runs_the_image_make_builds(rendered):
    container = find(rendered["local-cpu"], "Job")["spec"]["template"]["spec"]["containers"][0]
    makefile = (ROOT / "Makefile").read_text()
    assert f"IMAGE ?= {container['image']}\n" in makefile
    assert container["imagePullPolicy"] != "Always"  # a kind/minikube cluster has the image loaded, not in a registry
    config = yaml.safe_load(find(rendered["local-cpu"], "ConfigMap", container_config_map(rendered["local-cpu"]))["data"]["config.yaml"])
    assert config["model"]["name"].startswith("builtin:") and config["data"]["dataset"].startswith("builtin:")


def test_gpu_overlay_asks_for_a_gpu(rendered):
    pod = find(rendered["gpu"], "Job")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] >= 1
    assert pod["tolerations"] and pod["nodeSelector"]
    assert pod["containers"][0]["image"].endswith(":gpu")


def test_scheduled_overlay_is_a_cronjob_around_the_base_job(rendered):
    objects = rendered["scheduled"]
    assert "Job" not in {o["kind"] for o in objects}
    cron = find(objects, "CronJob")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["startingDeadlineSeconds"] > 0 and cron["successfulJobsHistoryLimit"] >= 1 and cron["failedJobsHistoryLimit"] >= 1
    base_spec = copy.deepcopy(find(rendered["base"], "Job")["spec"])
    scheduled_spec = copy.deepcopy(cron["jobTemplate"]["spec"])
    for spec in (base_spec, scheduled_spec):  # the overlay has its own config, so its ConfigMap hash differs
        for volume in spec["template"]["spec"]["volumes"]:
            volume.get("configMap", {}).pop("name", None)
        spec["template"]["spec"]["containers"][0].pop("image")  # and its own image (as every overlay)
    assert scheduled_spec == base_spec


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_names_an_image_with_a_tag(rendered, overlay):
    """The base's `image: finetune-job` would be `:latest`, pulled anew on every start: each overlay
    pins a tag (or a digest)."""
    pod = job_spec(rendered[overlay])["template"]["spec"]
    for container in pod["containers"] + pod.get("initContainers", []):
        image = container["image"]
        name, _, tag = image.rpartition("/")[2].partition(":")
        assert "@sha256:" in image or (tag and tag != "latest"), f"{overlay}: {image} has no tag"


def multinode_checks(objects: list[dict]) -> None:
    job = find(objects, "Job")
    service = find(objects, "Service")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    labels = job_pod_labels(job)
    container = pod["containers"][0]
    env = job_pod(job, objects, {example_secret_name(): example_secret()}, index=1).env(container)
    assert spec["parallelism"] == spec["completions"] == int(env["NNODES"]) >= 2
    assert env["NODE_RANK"] == "1"
    # Indexed pods are named <job>-<index> and get DNS names <job>-<index>.<subdomain> from the headless
    # Service whose name is their subdomain (and which selects them).
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(env["MASTER_PORT"]) in {p["port"] for p in service["spec"]["ports"]}


def test_multinode_overlay_wires_ranks_and_the_rendezvous_address(rendered):
    multinode_checks(rendered["multinode"])


def test_multinode_names_stay_consistent_under_a_prefix(tmp_path):
    """A user's overlay that prefixes every name must rename the Service and the pods' subdomain together."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "overlays" / "multinode", tmp_path)],
        "namePrefix": "team-a-",
        "nameSuffix": "-v2",
    }))
    objects = render(tmp_path)
    assert find(objects, "Job")["metadata"]["name"] == "team-a-finetune-job-v2"
    multinode_checks(objects)


def test_kubelet_style_expansion():
    env = {"JOB_NAME": "train"}
    assert expand("$(JOB_NAME)-0.$(JOB_NAME)", env) == "train-0.train"
    assert expand("$(UNSET) $$(JOB_NAME)", env) == "$(UNSET) $(JOB_NAME)"


def example_secret() -> dict[str, str]:
    return yaml.safe_load(SECRET_EXAMPLE.read_text())["stringData"]


def example_secret_name() -> str:
    return yaml.safe_load(SECRET_EXAMPLE.read_text())["metadata"]["name"]


def container_config_map(objects: list[dict]) -> str:
    pod = find(objects, "Job")["spec"]["template"]["spec"]
    return next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
