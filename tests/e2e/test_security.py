"""The security review's findings, each fixed and shown here: downloads that would escape their folder,
the work dir, hub_token on disk, secrets in URLs, the log scrubber, the umask, run ids, and whose code
`trust_remote_code` runs. (The k8s image tags are checked in tests/deploy/test_k8s.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import stat
import sys
import urllib.parse
from pathlib import Path

import pytest

from conftest import DEMO, SHARED, base_env, run_cli, tiny_config, write_yaml
from support.faultproxy import FaultProxy
from job import storage
from job.cli import config_loader
from job.cli import logs
from job.storage import workdir
from job.config import S3Config
from job.errors import ConfigError, StorageError


# ---------------------------------------------------------------------------------------------- downloads


@pytest.fixture
def hostile(s3_server):
    """A proxy that lists one more object under a chosen folder: `<folder>../../../../escaped.txt`.
    S3 itself accepts such keys; SeaweedFS refuses to store them, so the proxy stands in for the bucket
    writer (a hostile one, or a careless tool)."""
    host, port = s3_server.endpoint.rsplit("/", 1)[1].split(":")
    with FaultProxy((host, int(port))) as proxy:
        folders: list[str] = []

        def change(method, target, body):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
            prefix = query.get("prefix", [""])[0]
            if method != "GET" or "list-type" not in query or prefix not in folders:
                return None
            entry = (f"<Contents><Key>{prefix}../../../../escaped.txt</Key><LastModified>2026-01-01T00:00:00.000Z"
                     '</LastModified><ETag>"0"</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>')
            return body.replace(b"</ListBucketResult>", entry.encode() + b"</ListBucketResult>")

        proxy.rewrite(change)
        proxy.folders = folders
        yield proxy


def _model_in(client, bucket: str, prefix: str) -> None:
    client.put_object(Bucket=bucket, Key=f"{prefix}/config.json", Body=b"{}")


@pytest.mark.parametrize("path", ["s3 model", "predict --model", "checkpoint resume", "champion scoring"])
def test_a_key_that_escapes_the_download_folder_is_refused(s3_server, bucket, hostile, tmp_path, path):
    client = s3_server.client()
    env = base_env(**{**s3_server.env(), "AWS_ENDPOINT_URL": hostile.endpoint}, FINETUNE_RUN_ID="victim",
                   TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cfg = tiny_config(str(tmp_path / "out"), training={"max_steps": 2})
    if path in ("s3 model", "predict --model"):
        _model_in(client, bucket, "models/m")
        hostile.folders.append("models/m/")
        if path == "s3 model":
            cfg["model"] = {"name": f"s3://{bucket}/models/m"}
            args = ["run", "--config", str(write_yaml(tmp_path / "job.yaml", cfg))]
        else:
            args = ["predict", "--model", f"s3://{bucket}/models/m", "--input", str(DEMO / "reviews.test.jsonl"),
                    "--output", str(tmp_path / "p.jsonl")]
    elif path == "checkpoint resume":
        cfg["output"]["uri"] = f"s3://{bucket}/runs"
        path_yaml = write_yaml(tmp_path / "job.yaml", cfg)
        from job.recipes import run

        sha = run.config_fingerprint(config_loader.load(str(path_yaml), use_env=False))
        state = {"path": "trainer_state.json", "size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}
        client.put_object(Bucket=bucket, Key="runs/victim/checkpoints/checkpoint-5/trainer_state.json", Body=b"{}")
        client.put_object(Bucket=bucket, Key="runs/victim/checkpoints/checkpoint-5/_SUCCESS",
                          Body=json.dumps({"step": 5, "config_sha256": sha, "files": [state]}).encode())
        hostile.folders.append("runs/victim/checkpoints/checkpoint-5/")
        args = ["run", "--config", str(path_yaml)]
    else:
        cfg["output"]["uri"] = f"s3://{bucket}/runs"
        _model_in(client, bucket, "runs/champ/model")
        client.put_object(Bucket=bucket, Key="runs/champ/_SUCCESS", Body=b'{"run_id": "champ", "files": []}')
        client.put_object(Bucket=bucket, Key="runs/champion.json", Body=json.dumps(
            {"run_id": "champ", "generation": 1, "model": "m", "metric": "test_f1", "value": 0.9, "previous": None,
             "nonce": "n", "promoted_at": "t", "by": "promote", "reason": "r"}).encode())
        hostile.folders.append("runs/champ/model/")
        args = ["run", "--config", str(write_yaml(tmp_path / "job.yaml", cfg))]
    proc = run_cli(*args, env=env, cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "escaped.txt: refusing to download: the key would be written outside" in last, last
    assert not list(tmp_path.rglob("escaped.txt"))


# ---------------------------------------------------------------------------------------------- work dir


def test_the_work_dir_is_private_and_never_reached_through_a_link(tmp_path):
    base = tmp_path / "finetune-job"
    run_dir = workdir.private(base, "r1", chosen=False)
    assert stat.S_IMODE(base.stat().st_mode) == stat.S_IMODE(run_dir.stat().st_mode) == 0o700

    loose = tmp_path / "loose"
    (loose / "r2").mkdir(parents=True, mode=0o755)
    os.chmod(loose / "r2", 0o755)
    workdir.private(loose, "r2", chosen=True)  # the user's own work_dir: its mode stays theirs
    assert stat.S_IMODE((loose / "r2").stat().st_mode) == 0o700  # the run's folder is made private

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = tmp_path / "planted"
    planted.symlink_to(elsewhere)
    with pytest.raises(StorageError, match="planted: not a directory of this job's own"):
        workdir.private(planted, "r3", chosen=False)
    (base / "r4").symlink_to(elsewhere)
    with pytest.raises(StorageError, match="r4: not a directory of this job's own"):
        workdir.private(base, "r4", chosen=False)
    assert list(elsewhere.iterdir()) == []
    if os.geteuid() == 0:  # root can hand a directory to another user, as one would plant it
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o777)
        os.chown(theirs, 4242, 4242)
        with pytest.raises(StorageError, match="owned by uid 4242, not by this job's user"):
            workdir.private(theirs, "r5", chosen=False)


def test_a_planted_link_at_the_default_work_dir_stops_the_run(tmp_path):
    tmp, elsewhere = tmp_path / "tmp", tmp_path / "elsewhere"
    tmp.mkdir()
    elsewhere.mkdir()
    (tmp / "finetune-job").symlink_to(elsewhere)
    cfg = write_yaml(tmp_path / "job.yaml", tiny_config(str(tmp_path / "out")))
    proc = run_cli("run", "--config", str(cfg), env=base_env(TMPDIR=str(tmp)), cwd=tmp_path)
    assert proc.returncode == 6, proc.stderr[-2000:]
    assert f"storage error: output.work_dir: {tmp}/finetune-job: not a directory of this job's own" in proc.stderr
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------------------------------------- hub_token


def test_hub_token_never_lands_in_training_args_bin(tmp_path):
    """An interrupted run leaves its local checkpoints behind: their training_args.bin has no token."""
    import subprocess
    import time

    import torch

    token = "hf_TokenThatMustNotBePickled0123"
    cfg = tiny_config(str(tmp_path / "out"), checkpoint={"every_steps": 2}, output={"work_dir": str(tmp_path / "work")})
    cfg["training"].update(hub_token=token, logging_steps=1)
    path = write_yaml(tmp_path / "job.yaml", cfg)
    with open(tmp_path / "run.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "job", "run", "--config", str(path)], cwd=tmp_path,
                                env=base_env(FINETUNE_RUN_ID="tok"), stdout=subprocess.DEVNULL, stderr=err)
    while "step 5/" not in (tmp_path / "run.log").read_text():
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 10
    saved = list((tmp_path / "work").rglob("training_args.bin"))
    assert saved  # the checkpoints are there, with their training_args.bin
    for file in saved:
        assert token.encode() not in file.read_bytes()
        assert torch.load(file, weights_only=False).hub_token is None
    assert not any(token.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "job.yaml")


# ---------------------------------------------------------------------------------------------- URLs, logs


def test_url_passwords_reach_no_file_and_no_log(tmp_path):
    password = "pw-UrlPassword-4242"
    endpoint = f"http://finetune:{password}@127.0.0.1:9"
    cfg = tiny_config(str(tmp_path / "out"), s3={"endpoint_url": endpoint}, training={"max_steps": 3})
    path = write_yaml(tmp_path / "job.yaml", cfg)
    env = base_env(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="AKIAURLTEST00000001", AWS_SECRET_ACCESS_KEY="x" * 40,
                   FINETUNE_RUN_ID="urls")
    ran = run_cli("run", "--config", str(path), env=env, cwd=tmp_path, check=True)
    shown = run_cli("config", "--config", str(path), env=env, cwd=tmp_path, check=True)
    failed = run_cli("check", "--config", str(path), "--set", "output.uri=s3://bucket/runs", "--set", "s3.max_attempts=1",
                     env=env, cwd=tmp_path)
    assert failed.returncode == 6 and 'Could not connect to the endpoint URL: "http://***@127.0.0.1:9/' in failed.stderr
    assert "s3.endpoint_url" in shown.stdout and '"http://***@127.0.0.1:9"' in shown.stdout
    published = [p for p in (tmp_path / "out" / "urls").rglob("*") if p.is_file()]
    assert {"config.yaml", "report.html"} <= {p.name for p in published}
    assert "endpoint_url: http://***@127.0.0.1:9" in (tmp_path / "out" / "urls" / "config.yaml").read_text()
    texts = [ran.stdout, ran.stderr, shown.stdout, failed.stderr] + [p.read_bytes().decode("utf-8", "replace") for p in published]
    assert not any(password in text for text in texts)


def test_the_scrubber_replaces_whole_values_only():
    handler = logs._RedactingHandler(io.StringIO())
    handler.set_secrets(["test", "AKIAWHOLEVALUE00001", "aws/Secret+Value0123456789=", "hf_TokenValue123456"])
    assert handler.scrub("test_f1 0.8 (train=480, test=60)") == "test_f1 0.8 (train=480, test=60)"  # too short to be one
    assert handler.scrub("Credential=AKIAWHOLEVALUE00001/20260101") == "Credential=***/20260101"
    assert handler.scrub("key aws/Secret+Value0123456789=abc") == "key ***abc"  # its edges are not word characters
    assert handler.scrub("Bearer hf_TokenValue123456.") == "Bearer ***."
    # A value glued to more letters, digits or _ is part of another word (a metric name, an identifier).
    assert handler.scrub("hf_TokenValue123456_f1 AKIAWHOLEVALUE00001x") == "hf_TokenValue123456_f1 AKIAWHOLEVALUE00001x"
    assert handler.scrub("see http://user:pass@host/x") == "see http://***@host/x"


def test_metric_names_survive_a_short_access_key(tmp_path):
    cfg = write_yaml(tmp_path / "job.yaml", tiny_config(str(tmp_path / "out"), training={"max_steps": 3}))
    proc = run_cli("run", "--config", str(cfg), env=base_env(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test"),
                   cwd=tmp_path, check=True)
    assert "  test_f1: " in proc.stdout and "***" not in proc.stdout + proc.stderr


def test_library_warnings_keep_their_line_and_lose_their_traceback():
    import logging

    records = []
    for debug in (False, True):
        stream = io.StringIO()
        handler = logs._RedactingHandler(stream, debug)
        try:
            raise ValueError("headers cut")
        except ValueError:
            record = logging.LogRecord("urllib3.connection", logging.WARNING, __file__, 1, "Failed to parse headers", None, sys.exc_info())
        records.append(handler.format(record))
        own = logging.LogRecord("job.cli", logging.ERROR, __file__, 1, "internal error", None, record.exc_info)
        assert "Traceback" in handler.format(own)  # the job's own bugs keep it
    assert records[0] == "Failed to parse headers"
    assert records[1].startswith("Failed to parse headers\nTraceback") and "ValueError: headers cut" in records[1]


# ---------------------------------------------------------------------------------------------- umask, run id


def test_no_process_wide_umask_change(tmp_path, monkeypatch):
    umask = os.umask(0o027)
    os.umask(umask)
    assert storage.stores._read_umask() == umask

    def forbidden(mask):
        raise AssertionError("os.umask changes the mode of files every thread creates")

    monkeypatch.setattr(os, "umask", forbidden)
    store = storage.open_store(str(tmp_path / "out"), S3Config())
    store.put_bytes(b"x", "a/b.json")
    store.put_if(b"y", "c.json", None)
    assert stat.S_IMODE((tmp_path / "out" / "a" / "b.json").stat().st_mode) == 0o666 & ~storage.stores._UMASK


@pytest.mark.parametrize("run_id", ["abc\n", "abc\nrm -rf", "../escape", "a" * 129])
def test_a_run_id_must_match_whole(tmp_path, run_id):
    path = tmp_path / "job.yaml"
    path.write_text(f"run_id: {json.dumps(run_id)}\n")
    with pytest.raises(ConfigError, match="run_id .*: use 1-128 letters"):
        config_loader.load(str(path), use_env=False)


# ---------------------------------------------------------------------------------------------- remote code


def _model_with_code(folder: Path) -> Path:
    """A saved BERT classifier whose config points at code shipped beside it (custom.py), which leaves
    a marker file when it is imported: the proof that it ran."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab_file=str(SHARED / "models" / "bert-uncased-vocab" / "vocab.txt"))
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     id2label={0: "negative", 1: "positive"}))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "custom.py").write_text(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['REMOTE_CODE_MARKER']).write_text('ran')\n"
        "from transformers import BertConfig, BertForSequenceClassification\n"
        "class CustomConfig(BertConfig):\n    pass\n"
        "class CustomModel(BertForSequenceClassification):\n    config_class = CustomConfig\n"
    )
    settings = json.loads((folder / "config.json").read_text())
    settings["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForSequenceClassification": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


def test_trust_remote_code_applies_to_the_named_model_only(tmp_path, monkeypatch):
    from job import models, tasks
    from job.retraining import promotion

    marker = tmp_path / "ran"
    monkeypatch.setenv("REMOTE_CODE_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = _model_with_code(tmp_path / "champion-model")
    cfg = config_loader.load(str(write_yaml(tmp_path / "job.yaml", {"model": {"name": str(folder), "trust_remote_code": True},
                                                               "data": {"dataset": "builtin:sentiment-demo"}})), use_env=False)
    task = tasks.get("text-classification")
    spec = type("Spec", (), {})()
    monkeypatch.setattr(task, "model_kwargs", lambda spec: {"id2label": {0: "negative", 1: "positive"}})

    # The champion's model, from the bucket: its code never runs, whatever the config says.
    _, model = promotion._load(folder, cfg, task, spec, "champ")
    assert type(model).__name__ == "BertForSequenceClassification" and not marker.exists()
    # The model the config names, with trust_remote_code: its code runs (so the check above can fail).
    _, model = models.loading._from_pretrained(str(folder), cfg, models.model_class(task), {}, tmp_path)
    assert type(model).__name__ == "CustomModel" and marker.read_text() == "ran"
