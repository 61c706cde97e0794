"""The cluster's own kinds: Kueue (the component, the kueue overlay, the example queues) and the Kubeflow
Trainer TrainJob overlay. Every rendered manifest validates offline: built-in kinds with
`kubernetes-validate --strict`, Kueue and Trainer kinds against their CRDs in ../shared/crds
(tests/support/crds.py says what that does and does not check).
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import crds
from support import kube
from conftest import skip_or_fail
from job import errors
from support.kube import CLUSTER_OVERLAYS, K8S, OVERLAYS, find, kubectl, render

KUEUE_COMPONENT = K8S / "components" / "kueue"
QUEUE_SETUPS = ("cpu", "gpu")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# Which example queue each overlay's requests are sized for.
QUEUE_FOR = {"local-cpu": "cpu", "kueue": "cpu", "scheduled": "cpu", "gpu": "gpu", "multinode": "gpu"}


@pytest.fixture(autouse=True)
def _needs_kubectl_and_crds():
    if kubectl() is None:
        skip_or_fail("kubectl is not installed (it renders the kustomize overlays)")
    if not crds.CRDS.is_dir():
        skip_or_fail(f"{crds.CRDS} is missing (the Kueue and Kubeflow Trainer CRDs)")


@pytest.fixture(scope="module")
def known():
    return crds.schemas()


def with_kueue(overlay: str, tmp_path: Path) -> list[dict]:
    """An overlay with the Kueue component added, as the README tells users to do."""
    folder = tmp_path / f"{overlay}-kueue"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "overlays" / overlay, folder)],
        "components": [os.path.relpath(KUEUE_COMPONENT, folder)],
    }))
    return render(folder)


def rendered_sets(tmp_path: Path) -> dict[str, list[dict]]:
    """Every manifest set the repository ships, rendered: base, overlays, queues, component on each."""
    sets = {"base": render(K8S / "base")}
    sets |= {name: render(K8S / "overlays" / name) for name in (*OVERLAYS, *CLUSTER_OVERLAYS)}
    sets |= {f"kueue/{name}": render(K8S / "kueue" / name) for name in QUEUE_SETUPS}
    sets |= {f"{name}+kueue": with_kueue(name, tmp_path) for name in OVERLAYS if name != "kueue"}
    sets["torch-distributed runtime"] = list(yaml.safe_load_all((crds.CRDS / "kubeflow-trainer" / "runtime-torch_distributed.yaml").read_text()))
    return sets


def strict_builtin(documents: list[dict]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.31.0", "-"],
        input=yaml.safe_dump_all(documents), capture_output=True, text=True, timeout=120,
    )


def all_errors(documents: list[dict], known) -> list[str]:
    """Schema errors of a manifest set: custom kinds against the CRDs, the others strictly built in."""
    problems = [line for doc in documents if crds.is_custom(doc) for line in crds.errors(doc, known)]
    builtin = [doc for doc in documents if not crds.is_custom(doc)]
    if builtin:
        proc = strict_builtin(builtin)
        if proc.returncode != 0:
            problems.append(proc.stdout + proc.stderr)
    return problems


def test_every_rendered_manifest_validates(tmp_path, known):
    sets = rendered_sets(tmp_path)
    problems = {name: all_errors(docs, known) for name, docs in sets.items()}
    assert {name: p for name, p in problems.items() if p} == {}
    kinds = {doc["kind"] for docs in sets.values() for doc in docs if crds.is_custom(doc)}
    assert {"TrainJob", "ClusterTrainingRuntime", "ClusterQueue", "LocalQueue", "ResourceFlavor", "WorkloadPriorityClass"} <= kinds


@pytest.mark.parametrize("where, mistake", [
    ("TrainJob", lambda d: d["spec"]["trainer"].__setitem__("numNode", d["spec"]["trainer"].pop("numNodes"))),
    ("TrainJob", lambda d: d["spec"]["trainer"]["env"][0]["valueFrom"]["fieldRef"].__setitem__(
        "fieldPth", d["spec"]["trainer"]["env"][0]["valueFrom"]["fieldRef"].pop("fieldPath"))),
    ("TrainJob", lambda d: d["metadata"].__setitem__("lables", {"a": "b"})),
    ("TrainJob", lambda d: d["spec"]["trainer"].__setitem__("numNodes", "two")),
    ("ClusterQueue", lambda d: d["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].__setitem__(
        "nominalQuotaa", d["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].pop("nominalQuota"))),
    ("LocalQueue", lambda d: d["spec"].__setitem__("clusterQueu", d["spec"].pop("clusterQueue"))),
])
def test_crd_validation_rejects_a_mistake(known, where, mistake):
    source = K8S / "overlays" / "trainjob" if where == "TrainJob" else K8S / "kueue" / "gpu"
    document = copy.deepcopy(find(render(source), where))
    assert crds.errors(document, known) == []
    mistake(document)
    assert crds.errors(document, known), f"a broken {where} passed"


def test_crds_are_the_ones_provenance_names():
    """../shared/crds is read, never edited: each file's sha256 is the one its PROVENANCE.md records."""
    for provenance in sorted(crds.CRDS.glob("*/PROVENANCE.md")):
        recorded = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})\s+(\S+)$", provenance.read_text(), re.M))
        assert recorded, provenance
        for name, digest in recorded.items():
            assert hashlib.sha256((provenance.parent / name).read_bytes()).hexdigest() == digest, name


# ------------------------------------------------------------------------------------------------ Kueue


def queued_jobs(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(metadata, spec) of what Kueue admits: each Job, or a CronJob's jobTemplate."""
    jobs = [(o["metadata"], o["spec"]) for o in objects if o["kind"] == "Job"]
    jobs += [(o["spec"]["jobTemplate"].get("metadata", {}), o["spec"]["jobTemplate"]["spec"]) for o in objects if o["kind"] == "CronJob"]
    return jobs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kueue_queues_every_job_suspended_with_requests(tmp_path, overlay):
    objects = render(K8S / "overlays" / overlay) if overlay == "kueue" else with_kueue(overlay, tmp_path)
    queue = find(render(K8S / "kueue" / QUEUE_FOR[overlay]), "LocalQueue")
    jobs = queued_jobs(objects)
    assert jobs
    for metadata, spec in jobs:
        assert metadata["labels"][QUEUE_LABEL] == queue["metadata"]["name"]
        assert spec["suspend"] is True  # created suspended; Kueue unsuspends it on admission
        # Kueue admits by requests: every container asks for CPU and memory (and the GPU it uses).
        for container in spec["template"]["spec"]["containers"]:
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests)
            assert set(container["resources"].get("limits", {})) - {"cpu", "memory"} <= set(requests)
        # Preemption suspends the Job: its pods get SIGTERM, the job checkpoints and exits 10, which the
        # podFailurePolicy retries (never FailJob).
        fail_job = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
        assert errors.EXIT_INTERRUPTED not in fail_job[0]["onExitCodes"]["values"]
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 120
    for cron in (o for o in objects if o["kind"] == "CronJob"):
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_kueue_overlay_names_a_priority_class_that_exists():
    job = find(render(K8S / "overlays" / "kueue"), "Job")
    priority = find(render(K8S / "kueue" / "cpu"), "WorkloadPriorityClass")
    assert job["metadata"]["labels"][PRIORITY_LABEL] == priority["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_example_cluster_queue_admits_one_run_of_each_overlay(tmp_path, overlay):
    """The example ClusterQueue covers every resource the overlay requests and has quota for all its
    pods at once (Kueue admits a multi-node Job whole or not at all)."""
    cluster_queue = find(render(K8S / "kueue" / QUEUE_FOR[overlay]), "ClusterQueue")
    quota = {r["name"]: quantity(r["nominalQuota"]) for group in cluster_queue["spec"]["resourceGroups"]
             for flavor in group["flavors"] for r in flavor["resources"]}
    for _, spec in queued_jobs(with_kueue(overlay, tmp_path) if overlay != "kueue" else render(K8S / "overlays" / overlay)):
        pods = spec.get("parallelism", 1)
        for container in spec["template"]["spec"]["containers"]:
            for name, value in container["resources"]["requests"].items():
                assert name in quota, f"{overlay} requests {name}, which the ClusterQueue does not cover"
                assert quantity(value) * pods <= quota[name], f"{overlay}: {pods} x {name} {value} exceeds the quota"


def quantity(value) -> float:
    return kube.quantity(str(value))


# ------------------------------------------------------------------------------------------ TrainJob


@pytest.fixture(scope="module")
def trainjob_objects():
    return render(K8S / "overlays" / "trainjob")


def trainjob_pod_patch(trainjob: dict) -> dict:
    (patch,) = trainjob["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return node["template"]["spec"]["template"]["spec"]


def test_trainjob_uses_the_torch_distributed_runtime(trainjob_objects):
    """It names the Trainer's torch-distributed ClusterTrainingRuntime and patches that runtime's
    replicated job and container by their real names."""
    trainjob = find(trainjob_objects, "TrainJob")
    runtime = yaml.safe_load((crds.CRDS / "kubeflow-trainer" / "runtime-torch_distributed.yaml").read_text())
    assert trainjob["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": runtime["kind"], "name": runtime["metadata"]["name"]}
    assert "torch" in runtime["spec"]["mlPolicy"]  # the torch plugin injects the PET_* variables
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    (patch,) = trainjob["spec"]["runtimePatches"]
    assert patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["name"] == replicated["name"]
    runtime_containers = {c["name"] for c in replicated["template"]["spec"]["template"]["spec"]["containers"]}
    assert {c["name"] for c in trainjob_pod_patch(trainjob)["containers"]} <= runtime_containers
    assert trainjob["spec"]["trainer"]["numNodes"] >= 2
    assert "Job" not in {o["kind"] for o in trainjob_objects}


def test_trainjob_runs_the_base_jobs_pod(trainjob_objects):
    """Same image (the gpu overlay's), command, environment, resources, volumes and security as the Job
    the other overlays run; only the run id's source differs (the JobSet's name, not the Job's)."""
    trainjob = find(trainjob_objects, "TrainJob")
    trainer = trainjob["spec"]["trainer"]
    job_pod = find(render(K8S / "overlays" / "gpu"), "Job")["spec"]["template"]["spec"]
    container = job_pod["containers"][0]
    dockerfile = (K8S.parent / "docker" / "Dockerfile").read_text()
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.M).group(1))
    assert trainer["command"] == entrypoint and trainer["args"] == container["args"]
    assert trainer["image"] == container["image"]
    assert trainer["resourcesPerNode"] == container["resources"]

    def by_name(env):
        return {e["name"]: e for e in env if e["name"] != "JOB_NAME"}

    trainer_env = by_name(trainer["env"])
    assert {k: v for k, v in trainer_env.items() if "configMapKeyRef" not in v.get("valueFrom", {})} == by_name(container["env"])
    assert trainer["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['jobset.sigs.k8s.io/jobset-name']"
    # envFrom's ConfigMap, key by key: every key any overlay's job.env sets.
    env_keys = {line.split("=", 1)[0] for path in K8S.glob("**/job.env") for line in path.read_text().splitlines() if "=" in line}
    mapped = {v["valueFrom"]["configMapKeyRef"]["key"] for v in trainer_env.values() if "configMapKeyRef" in v.get("valueFrom", {})}
    assert env_keys <= mapped

    pod = trainjob_pod_patch(trainjob)
    for key in ("securityContext", "serviceAccountName", "terminationGracePeriodSeconds"):
        assert pod[key] == job_pod[key], key
    assert pod["containers"][0]["securityContext"] == container["securityContext"]
    assert pod["containers"][0]["volumeMounts"] == container["volumeMounts"]
    assert sorted(pod["volumes"], key=str) == sorted(job_pod["volumes"], key=str)


def test_trainjob_references_resolve(trainjob_objects):
    trainjob = find(trainjob_objects, "TrainJob")
    names = [e["valueFrom"]["configMapKeyRef"]["name"] for e in trainjob["spec"]["trainer"]["env"] if "configMapKeyRef" in e.get("valueFrom", {})]
    names += [v["configMap"]["name"] for v in trainjob_pod_patch(trainjob)["volumes"] if "configMap" in v]
    for name in names:
        find(trainjob_objects, "ConfigMap", name)  # the hash-suffixed name kustomize generated
    find(trainjob_objects, "ServiceAccount", trainjob_pod_patch(trainjob)["serviceAccountName"])
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in trainjob["spec"]["trainer"]["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {yaml.safe_load((K8S / "s3-secret.example.yaml").read_text())["metadata"]["name"]}
