"""Where runs are published: a local directory or an S3-compatible bucket, behind one small interface.

A run is finished when, and only when, `<uri>/<run-id>/_SUCCESS` exists. `publish` uploads every file
first and writes `_SUCCESS` last; it lists each file with its size and sha256, so a reader can verify
what it downloads. Anything without `_SUCCESS` (a killed pod, a failed upload) is not a finished run.

S3 goes through boto3 and the standard AWS configuration: credentials from the usual chain,
`AWS_ENDPOINT_URL` (or `s3.endpoint_url`) for S3-compatible stores, and multipart uploads above
`s3.multipart_threshold_mb`. Credentials never pass through this module.

Every S3 operation is one retried unit (`S3Store._call`): a read is the request and its whole body (botocore's
own retries end before the body is read), a listing every page of it, a transfer the whole file. A unit is
retried with jittered exponential backoff while its fault is transient (5xx, throttling, a refused, reset or
cut reply), at most `s3.max_attempts` times and while `s3.retry_seconds` allow; within a multipart transfer
botocore retries each part a few times first. "404", "NoSuchKey" and "NotFound" mean the object is not
there; a refusal (403, a bad request) is not retried; either way the job's error is exit 6.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from job import env
from job.config import S3Config
from job.errors import StorageError

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
PROBE = ".finetune-job-probe"
LOCK = ".finetune-job.lock"  # local stores: held while a conditional write checks and renames
MISSING = ("404", "NoSuchKey", "NotFound")  # a cut 404 reply arrives with its bare status as the code
T = TypeVar("T")


def open_store(uri: str, s3: S3Config):
    """The store for an output URI: S3Store for s3://bucket/prefix, LocalStore for a path."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        return S3Store(bucket, prefix.strip("/"), s3)
    return LocalStore(Path(uri))


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


# ---------------------------------------------------------------------------------------------- local


def _read_umask() -> int:
    """This process's umask, read without setting it: os.umask can only be read by changing it, for
    every thread at once (a file another thread creates meanwhile gets the wrong mode). Linux shows it
    in /proc/self/status; elsewhere it is read once, here, when the module is imported."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _file_mode() -> int:
    """What open() would give a new file under this process's umask (mkstemp's 0600 is too strict
    for outputs other users or containers read)."""
    return 0o666 & ~_UMASK


class LocalStore:
    """A directory; every write lands under a temporary name and is renamed into place (atomic)."""

    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)

    def url(self, key: str) -> str:
        return str(self.root / key)

    def put_file(self, path: Path, key: str) -> None:
        with self._writing(key) as tmp:
            shutil.copyfile(path, tmp)

    def put_bytes(self, data: bytes, key: str) -> None:
        with self._writing(key) as tmp:
            Path(tmp).write_bytes(data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read ({exc.strerror or exc})", where=self.url(key)) from exc

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / key).unlink()
        # Drop the folders this left empty: on S3 a prefix disappears with its last object.
        parent = (self.root / key).parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone)
                break
            parent = parent.parent

    def download(self, prefix: str, dest: Path) -> None:
        src = self.root / prefix
        if not src.is_dir():
            raise StorageError("no such directory", where=str(src))
        shutil.copytree(src, dest, dirs_exist_ok=True)

    def get_with_etag(self, key: str) -> tuple[bytes | None, str | None]:
        """The object and a tag of its content (its sha256), for `put_if`."""
        data = self.get_bytes(key)
        return data, (hashlib.sha256(data).hexdigest() if data is not None else None)

    def put_if(self, data: bytes, key: str, etag: str | None) -> bool:
        """Compare-and-swap: write only if the object still has `etag` (None: only if it does not exist).

        S3's `If-Match`/`If-None-Match` for a directory: the check and the atomic rename happen under
        an exclusive `fcntl` lock on `<root>/.finetune-job.lock`, which every writer on this host (or
        on a file system with working POSIX locks) takes. False when another writer got there first."""
        import fcntl

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / LOCK, "a")
        except OSError as exc:
            raise StorageError(f"cannot lock ({exc.strerror or exc})", where=str(self.root / LOCK)) from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self.get_with_etag(key)[1] != etag:
                return False
            self.put_bytes(data, key)
            return True

    def modified(self, prefix: str) -> dt.datetime | None:
        """When anything under `prefix` was last written (None when nothing is there)."""
        times = [(self.root / key).stat().st_mtime for key in self.list(prefix)]
        return dt.datetime.fromtimestamp(max(times), dt.timezone.utc) if times else None

    @contextlib.contextmanager
    def _writing(self, key: str):
        target = self.root / key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot write ({exc.strerror or exc})", where=str(target)) from exc
        try:
            yield tmp
            os.chmod(tmp, _file_mode())
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write ({exc.strerror or exc})", where=str(target)) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


# ---------------------------------------------------------------------------------------------- S3


def _endpoint(s3: S3Config) -> str | None:
    return s3.endpoint_url or env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")


def _botocore_config(s3: S3Config, attempts: int):
    from botocore.config import Config

    # Path-style addressing for S3-compatible stores (MinIO, SeaweedFS, Ceph): their hostnames rarely
    # resolve per bucket. AWS itself (no endpoint set) keeps virtual-hosted style.
    addressing = {"addressing_style": "path"} if _endpoint(s3) else {}
    return Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=10,
        read_timeout=120,
        s3=addressing,
    )


def fsspec_options(s3: S3Config) -> dict:
    """s3fs storage_options equivalent to the boto3 client used for outputs."""
    client_kwargs = {k: v for k, v in {"endpoint_url": _endpoint(s3), "region_name": s3.region}.items() if v}
    config_kwargs = {"retries": {"mode": "standard", "total_max_attempts": s3.max_attempts}, "connect_timeout": 10}
    if _endpoint(s3):
        config_kwargs["s3"] = {"addressing_style": "path"}
    return {"client_kwargs": client_kwargs, "config_kwargs": config_kwargs}


def glob_s3(pattern: str, s3: S3Config) -> list[str]:
    """Expand an s3:// glob (`*` within a folder, `**` across folders) by listing the folder above its
    first wildcard, with the store's retries: a storage fault is a StorageError, never "no match"."""
    from fsspec.utils import glob_translate

    bucket, _, key = pattern[5:].partition("/")
    store = S3Store(bucket, "", s3)
    if not any(c in key for c in "*?["):
        return [pattern] if key and store.exists(key) else []
    folder = key[: re.search(r"[*?\[]", key).start()].rpartition("/")[0]
    wanted = re.compile(glob_translate(key))
    return [f"s3://{bucket}/{k}" for k in store.list(folder) if wanted.fullmatch(k)]


class _Incomplete(Exception):
    """A reply that parsed but lacks what every complete one has (its headers or body were cut)."""


_ETAG = re.compile(r'"[^"]+"')  # S3 quotes every ETag: a value cut short has lost its closing quote


def _etag_missing(http_response) -> bool:
    return http_response is not None and http_response.status_code == 200 and not _ETAG.fullmatch(
        http_response.headers.get("ETag", ""))


def _retry_part_without_etag(response=None, attempts=1, caught_exception=None, **kwargs):
    """botocore's retry hook for UploadPart: a 200 without a whole ETag is sent again (0.1 s later),
    like a part whose connection was reset, within the client's own attempts."""
    if caught_exception is None and response is not None and _etag_missing(response[0]) and attempts < 3:
        log.warning("storage: a part's reply came without its ETag; sending the part again (attempt %d)", attempts + 1)
        return 0.1
    return None


def _refuse_part_without_etag(http_response=None, **kwargs):
    """Still no ETag after botocore's attempts: the part failed, and with it the file (retried whole)."""
    if _etag_missing(http_response):
        raise _Incomplete("a part's reply without its ETag header")


_backoff = random.Random()  # jitter of its own: training seeds the global generator


class S3Store:
    def __init__(self, bucket: str, prefix: str, s3: S3Config):
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{join(bucket, prefix)}"
        self.max_attempts, self.retry_seconds = s3.max_attempts, s3.retry_seconds
        session = boto3.session.Session()
        # Direct calls are retried by _call alone (the request with its body). A multipart transfer is
        # many requests on threads of its own: botocore retries each of them a few times, so one failed
        # part does not restart the file, and a SIGTERM (which cancels the transfer) waits seconds for
        # the requests under way, not a long chain of botocore's retries.
        self.client = session.client("s3", endpoint_url=_endpoint(s3), region_name=s3.region, config=_botocore_config(s3, 1))
        self.transfers = session.client(
            "s3", endpoint_url=_endpoint(s3), region_name=s3.region, config=_botocore_config(s3, min(s3.max_attempts, 3))
        )
        # A part whose reply lost its headers still parses as a 200: boto3 would keep a missing or cut
        # ETag and CompleteMultipartUpload be refused (400) after every part was sent. Such a part failed.
        self.transfers.meta.events.register("needs-retry.s3.UploadPart", _retry_part_without_etag)
        self.transfers.meta.events.register("after-call.s3.UploadPart", _refuse_part_without_etag)
        mb = 1024 * 1024
        self.transfer = TransferConfig(
            multipart_threshold=s3.multipart_threshold_mb * mb,
            multipart_chunksize=s3.multipart_chunksize_mb * mb,
            max_concurrency=4,
        )

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put_file(self, path: Path, key: str) -> None:
        self._call(key, lambda: self.transfers.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer))

    def put_bytes(self, data: bytes, key: str) -> None:
        self._call(key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def get_bytes(self, key: str) -> bytes | None:
        return self.get_with_etag(key)[0]

    def exists(self, key: str) -> bool:
        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except Exception as exc:
                if _code(exc) in MISSING:
                    return False
                raise

        return self._call(key, head)

    def list(self, prefix: str) -> list[str]:
        return sorted(obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"] for obj in self._objects(prefix))

    def _objects(self, prefix: str) -> list[dict]:
        """Every object under `prefix` (a folder: `runs` does not match `runs-old/...`), all pages."""
        base = self._key(prefix)

        def pages() -> list[dict]:
            objects = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + "/" if base else ""):
                if "IsTruncated" not in page:  # an empty 200 (cut headers) must not read as "no objects"
                    raise _Incomplete("a listing reply without its body")
                objects.extend(page.get("Contents", []))
            return objects

        return self._call(prefix, pages)

    def delete(self, key: str) -> None:
        self._call(key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def download(self, prefix: str, dest: Path) -> None:
        """Every object under `prefix` into `dest`. Keys are names chosen by whoever wrote the bucket: one
        that would land outside `dest` (`../`, an absolute path) is refused before anything is written."""
        keys = [key for key in self.list(prefix) if not key.endswith("/")]  # "folder/" markers hold nothing
        if not keys:
            raise StorageError("no objects under this prefix", where=self.url(prefix))
        root = os.path.abspath(dest)
        targets = {}
        for key in keys:
            target = os.path.normpath(os.path.join(root, key[len(prefix) :].lstrip("/")))
            if os.path.commonpath([root, target]) != root or target == root:
                raise StorageError(f"refusing to download: the key would be written outside {dest}", where=self.url(key))
            targets[key] = target
        for key, target in targets.items():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            self._call(key, lambda: self.transfers.download_file(self.bucket, self._key(key), target, Config=self.transfer))

    def get_with_etag(self, key: str) -> tuple[bytes | None, str | None]:
        """The object and its ETag, for `put_if`: the request and its body are read as one unit."""

        def get() -> tuple[bytes | None, str | None]:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except Exception as exc:
                if _code(exc) in MISSING:
                    return None, None
                raise
            with contextlib.closing(response["Body"]) as body:
                data = body.read()  # botocore checks the length against Content-Length, when there is one
            if response.get("ContentLength") is None or "ETag" not in response:
                raise _Incomplete("a reply without its Content-Length or ETag header")
            return data, response["ETag"]

        return self._call(key, get)

    def put_if(self, data: bytes, key: str, etag: str | None) -> bool:
        """Compare-and-swap with S3 conditional writes: `If-Match: etag`, or `If-None-Match: *` when
        `etag` is None. False when another writer got there first (412, or 409 for a concurrent one)."""
        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}

        def put() -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except Exception as exc:
                if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"):
                    return False
                raise
            return True

        return self._call(key, put)

    def modified(self, prefix: str) -> dt.datetime | None:
        """When anything under `prefix` was last written (None when nothing is there)."""
        return max((obj["LastModified"] for obj in self._objects(prefix)), default=None)

    def _call(self, key: str, operation: Callable[[], T]) -> T:
        """`operation()`, retried while it fails with a transient fault, with jittered exponential backoff,
        at most `s3.max_attempts` times and while `s3.retry_seconds` allow; then one StorageError naming `key`."""
        started = time.monotonic()
        for attempt in itertools.count(1):
            try:
                return operation()
            except Exception as exc:
                problem, transient = _describe(exc)
                if problem is None:
                    raise  # not a storage fault: a bug, or one of the job's own errors
                pause = _backoff.uniform(0, min(10.0, 0.25 * 2**attempt))
                spent = time.monotonic() - started
                if not transient or attempt >= self.max_attempts or spent + pause > self.retry_seconds:
                    gave_up = f" (gave up after {attempt} attempts in {spent:.0f} s)" if transient and attempt > 1 else ""
                    raise StorageError(problem + gave_up, where=self.url(key)) from exc
                log.warning("storage: %s: %s; retrying in %.1f s (attempt %d)", self.url(key), problem, pause, attempt + 1)
                time.sleep(pause)


def _client_error(exc: BaseException | None):
    """The botocore ClientError behind `exc` (boto3's transfer errors wrap one), or None."""
    from botocore.exceptions import ClientError

    while exc is not None and not isinstance(exc, ClientError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _code(exc: BaseException) -> str | None:
    """The S3 error code of a failed request: "NoSuchKey", or the bare status ("404") of a cut reply."""
    error = _client_error(exc)
    if error is None:
        return None
    return str(error.response.get("Error", {}).get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


# 4xx answers a retry can change: a timeout, throttling.
_RETRIED_4XX = {"408", "429", "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException"}


def _describe(exc: BaseException) -> tuple[str | None, bool]:
    """(one line saying what failed, is it transient?) for a storage fault; (None, False) for anything
    else. Transient: 5xx and throttling answers, and every failure to get a whole reply (refused or reset
    connections, timeouts, cut bodies or headers). Not transient: refusals (403), bad requests, missing
    credentials, a local file that cannot be read."""
    from botocore.exceptions import BotoCoreError

    error = _client_error(exc)
    if error is not None:
        code = _code(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        message = error.response.get("Error", {}).get("Message") or error.operation_name
        if error.operation_name == "CompleteMultipartUpload" and 400 <= status < 500 and code not in ("403", "AccessDenied"):
            # The parts as the client recorded them were refused (a part's reply was cut, its ETag
            # lost or garbled; or the upload was completed by a try whose reply was lost): the file
            # is uploaded again from its start, within the unit's attempts.
            return f"{code}: {message} (completing the multipart upload was refused; uploading the whole file again)", True
        return f"{code}: {message}", status >= 500 or code in _RETRIED_4XX or (code.isdigit() and int(code) >= 500)
    if isinstance(exc, _cut_reply_errors()) or _garbled_reply(exc):
        return f"{type(exc).__name__}: {_first_line(exc)}", True
    if isinstance(exc, (BotoCoreError, OSError)):  # no credentials, a bad parameter, a local file: retrying cannot help
        return f"{type(exc).__name__}: {_first_line(exc)}", False
    return None, False


def _cut_reply_errors() -> tuple[type, ...]:
    """What botocore, boto3's transfers, urllib3 and aiohttp (s3fs) raise when no whole reply came back."""
    import socket

    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError
    from botocore.parsers import ResponseParserError
    from urllib3.exceptions import HTTPError

    errors = (HTTPClientError, ConnectionError, IncompleteReadError, ResponseParserError, RetriesExceededError,
              S3UploadFailedError, HTTPError, _Incomplete, builtins.ConnectionError, TimeoutError, socket.timeout)
    with contextlib.suppress(ImportError):
        import aiohttp

        errors += (aiohttp.ClientError,)
    return errors


def _garbled_reply(exc: BaseException) -> bool:
    """A ValueError out of botocore's reply parser: it reads headers such as Last-Modified with dateutil
    and lets its error through, so a header cut short ('... 28 Nov 2026 1') is a cut reply too."""
    if not isinstance(exc, ValueError):
        return False
    frame = exc.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_filename.endswith(os.path.join("botocore", "parsers.py")):
            return True
        frame = frame.tb_next
    return False


def fault_behind(exc: BaseException | None) -> BaseException | None:
    """The storage fault in `exc`'s chain, if any: a failing server or connection, not a missing object
    and not bad content. For reads that go through other libraries (s3fs wraps botocore's errors in
    OSError), so that a bucket that fails is told from a file that does not parse."""
    from botocore.exceptions import BotoCoreError, ClientError

    while exc is not None:
        if isinstance(exc, ClientError) and _code(exc) not in MISSING:
            return exc
        if isinstance(exc, _cut_reply_errors() + (BotoCoreError,)) or _garbled_reply(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- runs


# Characters that str.splitlines() and many JSON Lines readers take for line breaks.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_line(row: dict) -> str:
    """One JSON Lines record: UTF-8 kept readable, but the Unicode line breaks escaped (rt-polarity
    has U+0085 in its text), so that every reader sees exactly one record per line."""
    text = json.dumps(row, ensure_ascii=False)
    for char, escaped in _LINE_BREAKS.items():
        text = text.replace(char, escaped)
    return text + "\n"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish(local_dir: Path, store, run_id: str, extra: dict | None = None) -> dict:
    """Upload a staged run directory, then write `_SUCCESS` (the manifest) last."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name != SUCCESS)
    manifest_files = []
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        store.put_file(path, join(run_id, rel))
        manifest_files.append({"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)})
    manifest = {
        "run_id": run_id,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
        "files": manifest_files,
    }
    store.put_bytes(json.dumps(manifest, indent=2).encode(), join(run_id, SUCCESS))
    log.info("published %d files to %s", len(files), store.url(run_id))
    return manifest


def replace_file(store, run_id: str, path: str, data: bytes) -> None:
    """Rewrite one file of a finished run, and its entry in the `_SUCCESS` manifest. The manifest goes
    first: if the job stops in between, the old file no longer verifies (and a rerun, finding it
    unchanged, writes both again) instead of a new file that would not."""
    manifest = read_manifest(store, run_id)
    for entry in manifest["files"]:
        if entry["path"] == path:
            entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest["amended_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    store.put_bytes(json.dumps(manifest, indent=2).encode(), join(run_id, SUCCESS))
    store.put_bytes(data, join(run_id, path))


def delete_tree(store, prefix: str) -> None:
    """Delete every object under `prefix` (a run, a checkpoint)."""
    for key in store.list(prefix):
        store.delete(key)


def read_manifest(store, run_id: str) -> dict | None:
    """The run's `_SUCCESS` manifest, or None when the run is not finished."""
    data = store.get_bytes(join(run_id, SUCCESS))
    return json.loads(data) if data is not None else None


def probe(store) -> None:
    """Prove the output location is writable: write a probe object and delete it."""
    key = f"{PROBE}-{os.getpid()}"
    store.put_bytes(b"probe", key)
    if store.get_bytes(key) != b"probe":
        raise StorageError("wrote a probe object but could not read it back", where=store.url(key))
    store.delete(key)
