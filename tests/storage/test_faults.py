"""Storage that fails: the job's S3 operations through a fault-injecting proxy (tests/support/faultproxy.py) in
front of the real S3 server, which answers 503 and 500, resets connections mid-request and mid-reply,
cuts headers and bodies short, and delays. What the job reads is compared with what the server holds,
read directly (not through the proxy).

The end-to-end runs (real training, real promotion) are in tests/e2e/test_faults_runs.py.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from conftest import base_env, run_cli_here
from support.faultproxy import FAULTS, FaultProxy
from job import storage
from job.retraining import champion
from job.config import S3Config
from job.errors import StorageError

EVERY_FAULT = {fault: 0.05 for fault in FAULTS if fault != "delay"} | {"delay": 0.02}


@pytest.fixture
def proxy(s3_server):
    host, port = s3_server.endpoint.rsplit("/", 1)[1].split(":")
    with FaultProxy((host, int(port)), seed=11, delay=(0.1, 0.5)) as proxy:
        yield proxy


@pytest.fixture
def through(proxy, s3_server, monkeypatch):
    """open_store(uri, **s3 settings) talking to the proxy."""
    for key, value in {**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint}.items():
        monkeypatch.setenv(key, value)
    return lambda uri, **settings: storage.open_store(uri, S3Config(**settings))


def test_every_operation_survives_every_kind_of_fault(s3_server, bucket, proxy, through, tmp_path):
    """About a third of all requests fail, each kind alike; every operation still returns exactly what
    the server holds, and a missing object stays missing (None, False), never an error."""
    store = through(f"s3://{bucket}/runs", max_attempts=30, retry_seconds=120)
    direct = s3_server.client()
    proxy.set_rates(EVERY_FAULT)
    blobs = {f"r/{i}/part-{i}.bin": os.urandom(20_000 + 997 * i) for i in range(12)}
    for key, data in blobs.items():
        store.put_bytes(data, key)
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(300_000))
    store.put_file(upload, "r/file/upload.bin")
    blobs["r/file/upload.bin"] = upload.read_bytes()

    for key, data in blobs.items():
        assert direct.get_object(Bucket=bucket, Key=f"runs/{key}")["Body"].read() == data  # what landed
        assert store.get_bytes(key) == data  # what is read back, body included
        assert store.exists(key)
    assert store.list("r") == sorted(blobs)
    for i in range(8):
        assert store.get_bytes(f"r/missing-{i}.json") is None
        assert not store.exists(f"r/missing-{i}.json")
    store.download("r/file", tmp_path / "down")
    assert (tmp_path / "down" / "upload.bin").read_bytes() == upload.read_bytes()

    # Compare-and-swap keeps its promise: each write lands once, on the version it was given; a write
    # whose reply was lost is refused when retried (the caller's nonce check tells it was its own).
    for i in range(6):
        _, etag = store.get_with_etag("pointer.json")
        if not store.put_if(f"v{i}".encode(), "pointer.json", etag):
            assert store.get_bytes("pointer.json") == f"v{i}".encode()
    assert direct.get_object(Bucket=bucket, Key="runs/pointer.json")["Body"].read() == b"v5"
    assert all(proxy.counts[fault] > 0 for fault in FAULTS), proxy.counts  # every kind really happened


def test_a_reply_cut_inside_its_date_header_is_retried(s3_server, bucket, proxy, through):
    """botocore parses Last-Modified with dateutil and lets its ValueError through (make soak found
    it): a header cut short is a cut reply like any other, retried, never a traceback."""
    store = through(f"s3://{bucket}/runs", max_attempts=5, retry_seconds=60)
    store.put_bytes(b"champion", "pointer.json")
    proxy.add("HEAD", "pointer.json", "cut_date")
    proxy.add("GET", "pointer.json", "cut_date")
    assert store.exists("pointer.json")
    assert store.get_bytes("pointer.json") == b"champion"
    assert proxy.counts["cut_date"] == 2


def test_a_cut_404_reply_is_a_missing_object(bucket, proxy, through):
    """A 404 whose headers or body are cut arrives as the bare code "404": still "not there", at once."""
    store = through(f"s3://{bucket}/runs", max_attempts=1)
    for fault in ("cut_body", "cut_headers", "cut_headers"):
        proxy.add("GET", "/nothing-here.json", fault)
        proxy.add("HEAD", "/nothing-here.json", "cut_headers")
    for _ in range(3):
        assert store.get_bytes("nothing-here.json") is None
        assert not store.exists("nothing-here.json")
    assert proxy.counts == {"cut_body": 1, "cut_headers": 5}


def test_retrying_stops_after_retry_seconds(bucket, proxy, through):
    store = through(f"s3://{bucket}/runs", max_attempts=1000, retry_seconds=3)
    proxy.set_rates({"slowdown": 1.0})
    started = time.monotonic()
    with pytest.raises(StorageError) as failed:
        store.get_bytes("anything.json")
    took = time.monotonic() - started
    assert took < 3 + 5, took  # the bound (and a last request), not botocore's or the proxy's own
    assert "SlowDown: Please reduce your request rate." in str(failed.value)
    assert "gave up after" in str(failed.value) and proxy.counts["slowdown"] > 3


def test_a_refusal_is_not_retried(s3_server, bucket, proxy, through, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    store = through(f"s3://{bucket}/runs", max_attempts=50, retry_seconds=60)
    with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
        store.put_bytes(b"x", "x.json")
    assert proxy.requests == 1


def test_keys_that_escape_the_target_are_refused_before_anything_is_written(s3_server, bucket, proxy, through, tmp_path):
    """S3 accepts `../` in keys (SeaweedFS does not: the proxy adds one to the listing, as a hostile
    or merely careless writer of the bucket would)."""
    store = through(f"s3://{bucket}/runs")
    store.put_bytes(b"weights", "r/model/model.safetensors")
    proxy.rewrite(_escaping_listing("runs/r/model/../../../../escaped.txt"))
    with pytest.raises(StorageError, match="refusing to download: the key would be written outside"):
        store.download("r/model", tmp_path / "deep" / "target")
    assert not list(tmp_path.rglob("*.txt")) and not list(tmp_path.rglob("model.safetensors"))


def _escaping_listing(key: str):
    """A proxy rewrite: every object listing gains `key`."""
    entry = (f"<Contents><Key>{key}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
             '<ETag>"0"</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>').encode()

    def change(method, target, body):
        if method == "GET" and "list-type=2" in target and b"</ListBucketResult>" in body:
            return body.replace(b"</ListBucketResult>", entry + b"</ListBucketResult>")
        return None

    return change


def _finished_run(store, run_id: str) -> None:
    store.put_bytes(b'{"test_f1": 0.5}', f"{run_id}/metrics.json")
    store.put_bytes(f'{{"run_id": "{run_id}", "finished_at": "2026-01-01T00:00:00+00:00", "files": []}}'.encode(), f"{run_id}/_SUCCESS")


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_a_pointer_write_whose_reply_is_lost_succeeds(s3_server, bucket, proxy, tmp_path, monkeypatch, command):
    """The write lands, its reply is reset, and every retry fails until the attempts run out: the
    command reads the pointer back, finds its own nonce, and reports success (exit 0)."""
    uri = f"s3://{bucket}/runs"
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = storage.open_store(uri, S3Config())
    for run_id in ("a", "b"):
        _finished_run(store, run_id)
    champion.promote(store, "a", "test_f1", "first")
    if command == "rollback":
        champion.promote(store, "b", "test_f1", "second")
    proxy.add("PUT", "/runs/champion.json", "reset_response")
    proxy.add("PUT", "/runs/champion.json", "slowdown", times=5)
    env = base_env(**{**s3_server.env(), "AWS_ENDPOINT_URL": proxy.endpoint})
    args = ("promote", "b") if command == "promote" else ("rollback",)
    proc = run_cli_here(*args, "--output", uri, "--set", "s3.max_attempts=3", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "it landed" in proc.stderr and "Traceback" not in proc.stderr
    assert proxy.counts == {"reset_response": 1, "slowdown": 2}
    pointer = champion.current(store)
    assert pointer["run_id"] == ("b" if command == "promote" else "a")
    assert [r["generation"] for r in champion.history(store)] == list(range(1, pointer["generation"] + 1))
    assert champion.record(store, pointer["generation"]) == pointer


def test_manifest_of_a_replaced_file_still_verifies(s3_server, bucket, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = storage.open_store(f"s3://{bucket}/runs", S3Config())
    store.put_bytes(b"old", "r/metrics.json")
    store.put_bytes(b'{"run_id": "r", "files": [{"path": "metrics.json", "size": 3, "sha256": "x"}]}', "r/_SUCCESS")
    storage.replace_file(store, "r", "metrics.json", b"new!")
    entry = storage.read_manifest(store, "r")["files"][0]
    assert entry == {"path": "metrics.json", "size": 4, "sha256": hashlib.sha256(b"new!").hexdigest()}
    assert store.get_bytes("r/metrics.json") == b"new!"


def _multipart(through, bucket: str, tmp_path, **settings):
    """A store that uploads a 12 MB file in three 5 MB parts, and that file."""
    store = through(f"s3://{bucket}/runs", multipart_threshold_mb=5, multipart_chunksize_mb=5, **settings)
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(12 * 1024 * 1024))
    return store, path


def test_a_part_whose_reply_lost_its_etag_is_sent_again(s3_server, bucket, proxy, through, tmp_path):
    """A part reply cut inside its ETag parses as a 200 with a garbled ETag: boto3 would record the part
    as uploaded and CompleteMultipartUpload be refused (400). The part is a failed part: sent again."""
    store, path = _multipart(through, bucket, tmp_path, max_attempts=1)
    proxy.add("PUT", "partNumber=2", "cut_etag")
    store.put_file(path, "r/model.safetensors")
    assert proxy.counts == {"cut_etag": 1}
    body = s3_server.client().get_object(Bucket=bucket, Key="runs/r/model.safetensors")["Body"].read()
    assert body == path.read_bytes()


def test_a_refused_multipart_completion_uploads_the_whole_file_again(s3_server, bucket, proxy, through, tmp_path, caplog):
    store, path = _multipart(through, bucket, tmp_path, max_attempts=3, retry_seconds=60)
    proxy.add("POST", "uploadId=", "invalid_part")
    store.put_file(path, "r/model.safetensors")
    assert proxy.counts == {"invalid_part": 1}
    assert "completing the multipart upload was refused; uploading the whole file again" in caplog.text
    body = s3_server.client().get_object(Bucket=bucket, Key="runs/r/model.safetensors")["Body"].read()
    assert body == path.read_bytes()


@pytest.mark.parametrize("fault", ["cut_headers", "cut_body"])
def test_a_cut_reply_to_starting_a_multipart_upload_is_retried(s3_server, bucket, proxy, through, tmp_path, fault):
    """CreateMultipartUpload's reply cut short parses without its UploadId (s3transfer: KeyError, a
    traceback, in a chaos run): a cut reply like any other, the file is uploaded again."""
    store, path = _multipart(through, bucket, tmp_path, max_attempts=3, retry_seconds=60)
    proxy.add("POST", "?uploads", fault)
    store.put_file(path, "r/model.safetensors")
    assert proxy.counts == {fault: 1}
    body = s3_server.client().get_object(Bucket=bucket, Key="runs/r/model.safetensors")["Body"].read()
    assert body == path.read_bytes()


def test_a_checkpoint_download_that_does_not_match_its_manifest_is_downloaded_again(s3_server, bucket, through, tmp_path, caplog):
    """A file that arrives whole in the transfer's eyes but not the manifest's (here: changed in the
    bucket, then put back) is downloaded again, not taken for the checkpoint and not exit 6."""
    from job.training import checkpoints

    store = through(f"s3://{bucket}/runs", max_attempts=3)
    saved = tmp_path / "checkpoint-4"
    saved.mkdir()
    (saved / "model.safetensors").write_bytes(os.urandom(50_000))
    storage.publish(saved, store, checkpoints.prefix("run", 4), extra={"step": 4, "config_sha256": "c"})
    key = f"runs/{checkpoints.prefix('run', 4)}/model.safetensors"
    good = (saved / "model.safetensors").read_bytes()
    direct, downloads = s3_server.client(), []
    original = store.download

    def download_once_wrong(prefix, dest):  # the first download finds a cut file, the next the real one
        downloads.append(prefix)
        direct.put_object(Bucket=bucket, Key=key, Body=good[:-100] if len(downloads) == 1 else good)
        original(prefix, dest)

    store.download = download_once_wrong
    local, manifest = checkpoints.fetch_latest(store, "run", tmp_path / "resume", "c")
    assert len(downloads) == 2 and (local / "model.safetensors").read_bytes() == good
    assert "checkpoint-4 downloaded with model.safetensors not matching its manifest; downloading it again" in caplog.text


@pytest.mark.parametrize("method, fault, times", [("HEAD", "cut_headers", 1), ("HEAD", "cut_etag", 1),
                                                  ("GET", "cut_headers", 6), ("GET", "cut_body", 3)])
def test_a_download_survives_cut_replies_to_its_head_and_ranged_gets(s3_server, bucket, proxy, through, tmp_path,
                                                                      method, fault, times):
    """A multipart download asks HeadObject for the size and ETag, then GETs ranges. Cut replies parse
    without a ContentLength (s3transfer: KeyError), with a garbled ETag (every range refused, 412) or a
    cut Content-Range (ValueError): each is a cut reply, and the file is downloaded again."""
    store, path = _multipart(through, bucket, tmp_path, max_attempts=10, retry_seconds=60)
    store.put_file(path, "r/model.safetensors")
    proxy.add(method, "/runs/r/", fault, times=times)
    store.download("r", tmp_path / "down")
    assert proxy.counts[fault] == times
    assert (tmp_path / "down" / "model.safetensors").read_bytes() == path.read_bytes()
