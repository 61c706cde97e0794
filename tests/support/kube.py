"""Render the k8s/ overlays, and turn a rendered Job's pod into the `docker run` that runs it the same way.

The container test runs the local-cpu Job for real without a cluster: the command and arguments, the
environment (values, downward API fields, Secret and ConfigMap references, `$(VAR)` expansion), the
user, the read-only root, the capabilities, the volumes and the resource limits all come from the
rendered pod spec. What a cluster supplies around it (the labels the Job controller adds, the Secret's
values, the network) comes from the caller. A field this module cannot translate is an error, never
skipped: a translation that quietly drops a setting would test a different pod.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("local-cpu", "gpu", "scheduled", "multinode", "kueue")  # overlays that create a Job (or a CronJob)
CLUSTER_OVERLAYS = ("trainjob",)  # overlays of custom kinds only (tests/deploy/test_k8s_cluster.py)

# Pod and container fields that only matter to the scheduler or the API server, not to how the process runs.
_SCHEDULING_ONLY = {"restartPolicy", "serviceAccountName", "automountServiceAccountToken", "nodeSelector",
                    "tolerations", "subdomain", "hostname"}
_CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "workingDir",
                     "resources", "securityContext", "volumeMounts", "ports"}
_PULL = {"Always": "always", "IfNotPresent": "missing", "Never": "never"}
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_FIELD_IN_MAP = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(path: Path) -> list[dict]:
    """`kubectl kustomize PATH`, parsed: every document of the overlay as kubectl apply -k would send it."""
    proc = subprocess.run([kubectl() or "kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(matches)}")
    return matches[0]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("2Gi", "500m", "2") as a number."""
    match = _QUANTITY.match(str(value))
    if not match:
        raise ValueError(f"unsupported quantity {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def job_pod_labels(job: dict) -> dict[str, str]:
    """The labels a pod of this Job carries: its template's plus those the Job controller adds."""
    name = job["metadata"]["name"]
    labels = dict(job["spec"]["template"].get("metadata", {}).get("labels", {}))
    labels.update({"batch.kubernetes.io/job-name": name, "job-name": name})
    return labels


def job_pod(job: dict, objects: list[dict], secrets: dict[str, dict[str, str]], index: int = 0) -> Pod:
    """Pod number `index` of this Job, with the labels and annotations the Job controller gives it."""
    annotations = {}
    if job["spec"].get("completionMode") == "Indexed":
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
    return Pod(objects, secrets, job_pod_labels(job), annotations, name=f"{job['metadata']['name']}-{index}-x7k2p")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a `$`, the rest stays as written."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)


@dataclass
class Pod:
    """What the cluster supplies around the manifests when it runs one pod of a Job."""

    objects: list[dict]  # the rendered overlay (its ConfigMaps are looked up here)
    secrets: dict[str, dict[str, str]]  # Secret name -> data, as `kubectl create secret` would hold it
    labels: dict[str, str]
    annotations: dict[str, str]
    name: str = "pod"
    namespace: str = "default"

    def configmap(self, name: str) -> dict[str, str]:
        return find(self.objects, "ConfigMap", name).get("data", {})

    def _secret(self, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)

    def _field(self, path: str) -> str:
        simple = {"metadata.name": self.name, "metadata.namespace": self.namespace}
        if path in simple:
            return simple[path]
        match = _FIELD_IN_MAP.match(path)
        if not match:
            raise ValueError(f"fieldRef {path} is not supported")
        values = self.labels if match.group(1) == "labels" else self.annotations
        if match.group(2) not in values:
            raise ValueError(f"fieldRef {path}: the pod has no such {match.group(1)[:-1]}")
        return values[match.group(2)]

    def env(self, container: dict) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom first, then env in order."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                data = self.configmap(source["configMapRef"]["name"])
            elif "secretRef" in source:
                data = self._secret(source["secretRef"]["name"])
                if data is None:
                    raise ValueError(f"envFrom: Secret {source['secretRef']['name']} not given")
            else:
                raise ValueError(f"envFrom {source} is not supported")
            env.update({source.get("prefix", "") + key: value for key, value in data.items()})
        for var in container.get("env", []):
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            if "fieldRef" in source:
                env[name] = self._field(source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                ref = source.get("secretKeyRef") or source["configMapKeyRef"]
                data = self._secret(ref["name"]) if "secretKeyRef" in source else self.configmap(ref["name"])
                if data is not None and ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not ref.get("optional", False):
                    raise ValueError(f"env {name}: {ref['name']} has no key {ref['key']}")
            else:
                raise ValueError(f"env {name}: valueFrom {source} is not supported")
        return env


def docker_run(job: dict, pod: Pod, workdir: Path, *, network: str, env_overrides: dict[str, str] | None = None) -> list[str]:
    """The `docker run` command for one pod of `job`; files it mounts (ConfigMaps, the env file) go in workdir.

    `network` is the caller's: the cluster network has no docker equivalent. `env_overrides` replaces
    variables whose value is an address in the cluster (an S3 endpoint) with one reachable from here.
    """
    spec = job["spec"]["template"]["spec"]
    unknown = set(spec) - _SCHEDULING_ONLY - {"containers", "volumes", "securityContext", "terminationGracePeriodSeconds"}
    if unknown:
        raise ValueError(f"pod spec fields not translated: {sorted(unknown)}")
    if len(spec["containers"]) != 1:
        raise ValueError("only single-container pods are translated")
    container = spec["containers"][0]
    if set(container) - _CONTAINER_FIELDS:
        raise ValueError(f"container fields not translated: {sorted(set(container) - _CONTAINER_FIELDS)}")

    args = ["docker", "run", "--rm", "--network", network]
    env = pod.env(container)
    env.update(env_overrides or {})
    env_file = workdir / "pod.env"
    if any("\n" in value for value in env.values()):
        raise ValueError("multi-line environment values cannot go through --env-file")
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    args += ["--env-file", str(env_file)]

    args += _security(spec.get("securityContext", {}), container.get("securityContext", {}))
    args += _volumes(spec.get("volumes", []), container.get("volumeMounts", []), pod, workdir)
    args += _limits(container.get("resources", {}).get("limits", {}))
    if "terminationGracePeriodSeconds" in spec:
        args += ["--stop-timeout", str(spec["terminationGracePeriodSeconds"])]
    if "workingDir" in container:
        args += ["--workdir", container["workingDir"]]
    if "imagePullPolicy" in container:
        args += ["--pull", _PULL[container["imagePullPolicy"]]]

    # command replaces the image's ENTRYPOINT and args its CMD, as in Kubernetes; both see $(VAR) expansion.
    command = [expand(word, env) for word in container.get("command", [])]
    if command:
        args += ["--entrypoint", command[0]]
    return args + [container["image"], *command[1:], *(expand(word, env) for word in container.get("args", []))]


def _security(pod_context: dict, container_context: dict) -> list[str]:
    known = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "supplementalGroups", "seccompProfile",
             "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"}
    merged = {**pod_context, **container_context}  # the container's settings win, as in Kubernetes
    if set(merged) - known:
        raise ValueError(f"securityContext fields not translated: {sorted(set(merged) - known)}")
    args = []
    if "runAsUser" in merged:
        if merged.get("runAsNonRoot") and merged["runAsUser"] == 0:
            raise ValueError("runAsNonRoot with runAsUser 0: the kubelet would refuse to start it")
        args += ["--user", f"{merged['runAsUser']}:{merged.get('runAsGroup', merged['runAsUser'])}"]
    elif merged.get("runAsNonRoot"):
        raise ValueError("runAsNonRoot without runAsUser: not translated (the kubelet would check the image)")
    for group in [pod_context.get("fsGroup"), *pod_context.get("supplementalGroups", [])]:
        if group is not None:
            args += ["--group-add", str(group)]
    seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":  # RuntimeDefault is docker's own profile
        raise ValueError(f"seccompProfile {seccomp} is not translated")
    if merged.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if merged.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in merged.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in merged.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    return args


def _volumes(volumes: list[dict], mounts: list[dict], pod: Pod, workdir: Path) -> list[str]:
    by_name = {volume["name"]: volume for volume in volumes}
    args = []
    for mount in mounts:
        if set(mount) - {"name", "mountPath", "readOnly"}:
            raise ValueError(f"volumeMount {mount['name']}: fields not translated: {sorted(set(mount) - {'name', 'mountPath', 'readOnly'})}")
        volume = by_name[mount["name"]]
        path = mount["mountPath"]
        if "emptyDir" in volume:
            # An emptyDir on disk or in memory is a fresh, writable, exec-able directory: a tmpfs here.
            options = ["rw", "exec", "mode=1777"]
            if "sizeLimit" in volume["emptyDir"]:
                options.append(f"size={int(quantity(volume['emptyDir']['sizeLimit']))}")
            args += ["--tmpfs", f"{path}:{','.join(options)}"]
        elif "configMap" in volume:
            folder = workdir / "volumes" / mount["name"]
            folder.mkdir(parents=True)
            data = pod.configmap(volume["configMap"]["name"])
            items = volume["configMap"].get("items") or [{"key": key, "path": key} for key in data]
            for item in items:
                target = folder / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
                target.chmod(0o644)  # the configMap volume's defaultMode
            args += ["--volume", f"{folder}:{path}:{'ro' if mount.get('readOnly') else 'rw'}"]
        else:
            raise ValueError(f"volume {mount['name']}: only emptyDir and configMap volumes are translated")
    return args


def _limits(limits: dict) -> list[str]:
    if set(limits) - {"cpu", "memory"}:
        raise ValueError(f"resource limits not translated: {sorted(set(limits) - {'cpu', 'memory'})}")
    args = []
    if "cpu" in limits:
        args += ["--cpus", f"{quantity(limits['cpu']):g}"]
    if "memory" in limits:
        args += ["--memory", str(int(quantity(limits["memory"])))]
    return args
