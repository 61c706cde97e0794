"""The image, built and run for real: the local-cpu Job's pod in docker against the suite's S3 server.

No registry is reachable here, so the base image is made with debootstrap (Debian 12 minbase) and
cached under BASE_IMAGE; the CPU image is built on it with `make image`, as a user would. The
container then runs with what the rendered local-cpu Job says (tests/support/kube.py translates its pod
spec): command, environment, user, read-only root, tmpfs scratch, limits.

The container uses the host's network: the S3 server listens on loopback only, so the endpoint
is the same 127.0.0.1 URL the other tests use, with no dependence on the docker bridge's
addresses or on a firewall letting the bridge reach the host.

Without Docker these tests skip locally and fail in CI (CI=true), where .ci/run starts dockerd.
Timings go to the terminal summary; pytest -s is not needed.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_s3_port, report_timings, skip_or_fail, start_s3, stop_s3
from job import errors
from support.kube import K8S, Pod, docker_run, find, job_pod, kubectl, render

BASE_IMAGE = "finetune-job-base:bookworm"
# A CPU torch wheel for the image (the host's pip finds it here); without one the build downloads it.
WHEELS = Path(os.environ.get("TEST_WHEELS", "/opt/wheels"))
SECRET_EXAMPLE = K8S / "s3-secret.example.yaml"


def docker_ok() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def timings(request) -> dict[str, float]:
    """Seconds each step took, printed at the end of the session (the CI log keeps them)."""
    recorded: dict[str, float] = {}
    yield recorded
    report_timings(request.config, "container timings", recorded)


@pytest.fixture(scope="session")
def docker(tmp_path_factory):
    """A working Docker daemon: the running one, or a dockerd this fixture starts (as root) and stops."""
    if docker_ok():
        yield
        return
    if os.geteuid() != 0 or subprocess.run(["which", "dockerd"], capture_output=True).returncode != 0:
        skip_or_fail("no Docker daemon, and none can be started here (needs root and dockerd: apt-get install docker.io)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not docker_ok():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            pytest.fail(f"dockerd did not start: {log.read_text()[-2000:]}")
        time.sleep(1)
    yield
    daemon.terminate()
    daemon.wait(timeout=30)


@pytest.fixture(scope="session")
def base_image(docker, timings) -> str:
    """Debian 12 minbase from debootstrap, imported as BASE_IMAGE by `make base-image`; made once per
    Docker daemon. .ci/run starts building both before the venv installs, holding FINETUNE_IMAGE_LOCK
    until it is done: wait for it, and the build here finds everything made or cached."""
    lock = os.environ.get("FINETUNE_IMAGE_LOCK")
    if lock and Path(lock).exists():
        started = time.monotonic()
        with open(lock) as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # released when closed
        timings["waiting for .ci/run's image build, s"] = time.monotonic() - started
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode == 0:
        return BASE_IMAGE
    if subprocess.run(["which", "debootstrap"], capture_output=True).returncode != 0:
        skip_or_fail("debootstrap is missing (apt-get install debootstrap)")
    started = time.monotonic()
    proc = subprocess.run(["make", "-C", str(ROOT), "base-image", f"DEBIAN_BASE_IMAGE={BASE_IMAGE}"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timings["debian base image (debootstrap + import), s"] = time.monotonic() - started
    return BASE_IMAGE


@pytest.fixture(scope="session")
def local_cpu() -> list[dict]:
    if kubectl() is None:
        skip_or_fail("kubectl is not installed (it renders the local-cpu overlay)")
    return render(K8S / "overlays" / "local-cpu")


def make_image_vars(base: str, image: str) -> list[str]:
    wheels = [f"WHEELS={WHEELS}"] if list(WHEELS.glob("torch-*.whl")) else []
    return [f"IMAGE={image}", f"CPU_BASE_IMAGE={base}", *wheels]


@pytest.fixture(scope="session")
def cpu_image(base_image, local_cpu, timings) -> str:
    """`make image` on the debootstrap base, tagged as the local-cpu Job names it."""
    image = find(local_cpu, "Job")["spec"]["template"]["spec"]["containers"][0]["image"]
    started = time.monotonic()
    proc = subprocess.run(["make", "-C", str(ROOT), "image", *make_image_vars(base_image, image)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    timings["make image, s"] = time.monotonic() - started
    size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True, check=True)
    timings[f"{image} size, MB"] = round(int(size.stdout) / 1e6)
    return image


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    proc = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def example_secrets(s3_server) -> dict[str, dict[str, str]]:
    """The example Secret's name and keys, holding the test server's credentials."""
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    values = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    return {secret["metadata"]["name"]: {key: values[key] for key in secret["stringData"]}}


def output_location(objects: list[dict], job: dict, s3_server) -> tuple[str, str]:
    """(bucket, prefix) of output.uri in the config file the Job mounts; the bucket is made if missing."""
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    config = yaml.safe_load(find(objects, "ConfigMap", volume["configMap"]["name"])["data"]["config.yaml"])
    bucket, _, prefix = config["output"]["uri"].removeprefix("s3://").partition("/")
    client = s3_server.client()
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    return bucket, prefix


def renamed(job: dict, name: str) -> dict:
    """The same Job under another name: another Job object, so another run id."""
    job = copy.deepcopy(job)
    job["metadata"]["name"] = name
    return job


def fatal_exit_codes(job: dict) -> set[int]:
    rules = job["spec"]["podFailurePolicy"]["rules"]
    return {code for rule in rules if rule["action"] == "FailJob" for code in rule["onExitCodes"]["values"]}


@pytest.mark.slow
def test_rendered_local_cpu_job_runs_in_the_image(cpu_image, local_cpu, s3_server, tmp_path, timings):
    job = find(local_cpu, "Job")
    bucket, prefix = output_location(local_cpu, job, s3_server)
    client = s3_server.client()
    pod = job_pod(job, local_cpu, example_secrets(s3_server))
    command = docker_run(job, pod, tmp_path, network="host", env_overrides={"AWS_ENDPOINT_URL": s3_server.endpoint})

    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    timings["local-cpu Job in docker, s"] = time.monotonic() - started
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    # The run id is the Job's name; _SUCCESS lists every file, each of which is in the bucket with its size.
    run = f"{prefix}/{job['metadata']['name']}"
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{run}/_SUCCESS")["Body"].read())
    assert manifest["run_id"] == job["metadata"]["name"]
    listed = {f["path"] for f in manifest["files"]}
    assert {"config.yaml", "metrics.json", "predictions.jsonl", "model/config.json", "model/model.safetensors"} <= listed
    for entry in manifest["files"]:
        assert client.head_object(Bucket=bucket, Key=f"{run}/{entry['path']}")["ContentLength"] == entry["size"]
    # The pod logs as the cluster's collectors expect: one JSON object per line.
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert s3_server.secret_key not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_config_error_in_the_container_is_fatal_to_the_job(cpu_image, local_cpu, s3_server, tmp_path):
    job = find(local_cpu, "Job")
    pod = job_pod(job, local_cpu, example_secrets(s3_server))
    command = docker_run(job, pod, tmp_path, network="none",
                         env_overrides={"FINETUNE_TRAINING__NUM_TRAIN_EPOCS": "1"})  # a typo'd key
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == errors.EXIT_CONFIG, proc.stderr[-3000:]
    assert proc.returncode in fatal_exit_codes(job)  # the podFailurePolicy fails the Job without a retry
    assert "num_train_epochs" in proc.stderr  # the "did you mean" hint names the right key


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_job_resumes(cpu_image, local_cpu, s3_server, tmp_path):
    """`docker stop` signals PID 1 (tini) as the kubelet does; the job must get the SIGTERM, save and
    upload a checkpoint within the pod's grace period, on a read-only root, and exit 10 (retried), not
    be SIGKILLed when the grace period ends (137). A second pod of the same Job (so the same run id)
    then resumes from that checkpoint and finishes."""
    job = renamed(find(local_cpu, "Job"), f"sigterm-{uuid.uuid4().hex[:6]}")
    bucket, prefix = output_location(local_cpu, job, s3_server)
    overrides = {"AWS_ENDPOINT_URL": s3_server.endpoint, "FINETUNE_TRAINING__NUM_TRAIN_EPOCHS": "10"}
    command = docker_run(job, job_pod(job, local_cpu, example_secrets(s3_server)), tmp_path, network="host",
                         env_overrides=overrides)
    name = f"finetune-sigterm-{uuid.uuid4().hex[:8]}"
    detached = [*command[:2], "--detach", "--name", name, *command[2:]]
    detached.remove("--rm")  # keep the container to read its exit code
    subprocess.run(detached, check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 300
        while "step " not in (logs := subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr):
            running = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True)
            assert running.stdout.strip() == "true", f"the job ended before training:\n{logs[-3000:]}"
            assert time.monotonic() < deadline, f"no training step logged in 300 s:\n{logs[-3000:]}"
            time.sleep(1)
        # No --time: the container's stop timeout is the pod's terminationGracePeriodSeconds (tests/support/kube.py).
        subprocess.run(["docker", "stop", name], check=True, capture_output=True, timeout=400)
        state = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .State}}", name],
                                          capture_output=True, text=True, check=True).stdout)
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert state["ExitCode"] == errors.EXIT_INTERRUPTED, f"{state}\n{logs[-3000:]}"
    assert errors.EXIT_INTERRUPTED not in fatal_exit_codes(job)  # so Kubernetes starts another pod
    run = f"{prefix}/{job['metadata']['name']}"
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"{run}/checkpoints/").get("Contents", [])]
    assert any(key.endswith("/_SUCCESS") for key in keys), keys  # a complete checkpoint

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-" in resumed.stderr
    s3_server.client().head_object(Bucket=bucket, Key=f"{run}/_SUCCESS")


@pytest.mark.slow
def test_multinode_job_runs_as_two_containers_named_like_its_pods(cpu_image, local_cpu, tmp_path, timings):
    """The multinode overlay's Indexed Job as two containers on one docker network, each with the
    hostname and DNS name its pod gets from the headless Service (<job>-<index>.<service>): rank 1
    finds rank 0 through MASTER_ADDR exactly as in the cluster, and the pair trains with world size 2.

    Only what the GPU overlay adds is swapped out: the image and config become local-cpu's and the GPU
    limit goes (no GPU here). S3 is a second server bound to the network's gateway, the one address on
    this host both the containers and the test can reach."""
    objects = copy.deepcopy(render(K8S / "overlays" / "multinode"))
    job, service = find(objects, "Job"), find(objects, "Service")
    name, pod_spec = job["metadata"]["name"], job["spec"]["template"]["spec"]
    assert pod_spec["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    container = pod_spec["containers"][0]
    container["image"] = cpu_image
    container["resources"] = find(local_cpu, "Job")["spec"]["template"]["spec"]["containers"][0]["resources"]
    mounted = next(v for v in pod_spec["volumes"] if "configMap" in v)["configMap"]["name"]
    local_config = next(v for v in find(local_cpu, "Job")["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    find(objects, "ConfigMap", mounted)["data"] = find(local_cpu, "ConfigMap", local_config["configMap"]["name"])["data"]

    network = f"finetune-multinode-{uuid.uuid4().hex[:6]}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    names, s3 = [], None
    try:
        gateway = json.loads(subprocess.run(["docker", "network", "inspect", network], capture_output=True, text=True,
                                            check=True).stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        (tmp_path / "s3").mkdir()
        server, s3 = start_s3(tmp_path / "s3", free_s3_port(gateway), ip=gateway)
        bucket, prefix = output_location(objects, job, server)
        secrets = example_secrets(server)
        started, procs = time.monotonic(), []
        for index in range(job["spec"]["completions"]):
            workdir = tmp_path / f"pod-{index}"
            workdir.mkdir()
            command = docker_run(job, job_pod(job, objects, secrets, index=index), workdir, network=network,
                                 env_overrides={"AWS_ENDPOINT_URL": server.endpoint})
            names.append(f"{name}-{index}-{uuid.uuid4().hex[:6]}")
            dns = ["--name", names[-1], "--hostname", f"{name}-{index}", "--network-alias", f"{name}-{index}.{service['metadata']['name']}"]
            procs.append(subprocess.Popen([*command[:2], *dns, *command[2:]], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        results = [p.communicate(timeout=900) for p in procs]
        timings["multinode Job as 2 containers, s"] = time.monotonic() - started
        assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(r[1][-3000:] for r in results)
        assert "node 1 of 2, 1 worker(s) here, world size 2, rendezvous " f"{name}-0.{name}:29500" in results[1][1]
        run = f"{prefix}/{name}"
        metrics = json.loads(server.client().get_object(Bucket=bucket, Key=f"{run}/metrics.json")["Body"].read())
        assert metrics["world_size"] == 2
        server.client().head_object(Bucket=bucket, Key=f"{run}/_SUCCESS")
    finally:
        for container_name in names:
            subprocess.run(["docker", "rm", "-f", container_name], capture_output=True)
        if s3 is not None:
            stop_s3(s3)
        subprocess.run(["docker", "network", "rm", network], capture_output=True)


@pytest.mark.slow
def test_make_docker_run_trains_offline_into_the_output_dir(cpu_image, base_image, tmp_path, timings):
    output = tmp_path / "outputs"
    started = time.monotonic()
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "docker-run", *make_image_vars(base_image, cpu_image), f"OUTPUT_DIR={output}",
         "RUN_ARGS=run --set training.num_train_epochs=1"],
        capture_output=True, text=True, timeout=900,
    )
    timings["make docker-run (1 epoch, image cached), s"] = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [p.parent for p in output.glob("*/_SUCCESS")]
    assert len(runs) == 1 and (runs[0] / "model" / "model.safetensors").exists()


def test_translation_refuses_what_it_cannot_translate(local_cpu, tmp_path):
    job = copy.deepcopy(find(local_cpu, "Job"))
    job["spec"]["template"]["spec"]["hostNetwork"] = True
    with pytest.raises(ValueError, match="hostNetwork"):
        docker_run(job, Pod(local_cpu, {}, {}, {}), tmp_path, network="none")


def test_translation_carries_the_pod_spec(local_cpu, tmp_path):
    job = find(local_cpu, "Job")
    secrets = {"finetune-job-s3": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}}
    command = docker_run(job, job_pod(job, local_cpu, secrets), tmp_path, network="none")
    joined = " ".join(command)
    for flag in ("--read-only", "--user 10001:10001", "--cap-drop ALL", "--security-opt no-new-privileges",
                 "--tmpfs /tmp:", "--tmpfs /tmp/cache:", "--cpus 2", "--stop-timeout 300"):
        assert flag in joined
    assert command[-2:] == ["finetune-job:cpu", "run"]
    env = dict(line.split("=", 1) for line in (tmp_path / "pod.env").read_text().splitlines())
    assert env["FINETUNE_RUN_ID"] == job["metadata"]["name"] and env["AWS_SECRET_ACCESS_KEY"] == "secret"
    assert (tmp_path / "volumes" / "config" / "config.yaml").exists()
