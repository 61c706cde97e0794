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

import contextlib
import datetime as dt
import hashlib
import itertools
import logging
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from job.config import S3Config, env
from job.errors import StorageError
from job.storage.faults import MISSING, Incomplete, error_code, fault_of

log = logging.getLogger(__name__)

LOCK = ".finetune-job.lock"  # local stores: held while a conditional write checks and renames
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
        raise Incomplete("a part's reply without its ETag header")


# What a transfer's replies must hold: one whose headers or body were cut parses as a 200 without them,
# and s3transfer fails with a KeyError (a traceback; seen under make chaos) or, for a GET without its
# Content-Length, reads a short body as the whole. A reply without them is a cut reply: the file is
# transferred again.
_RANGE = re.compile(r"bytes \d+-\d+/\d+")
_REQUIRED = {"CreateMultipartUpload": "UploadId", "HeadObject": "ContentLength", "GetObject": "ContentLength"}


def _refuse_cut_reply(http_response=None, parsed=None, model=None, **kwargs):
    name = getattr(model, "name", "")
    needed = _REQUIRED.get(name)
    if parsed is not None and needed and needed not in parsed and "Error" not in parsed:
        raise Incomplete(f"a {name} reply without its {needed}")
    if name == "HeadObject" and _etag_missing(http_response):  # every ranged GET would then be refused (412)
        raise Incomplete("a HeadObject reply without its whole ETag")
    if name == "GetObject" and parsed and parsed.get("ContentRange") and not _RANGE.fullmatch(parsed["ContentRange"]):
        raise Incomplete("a ranged GetObject reply with its Content-Range cut short")  # s3transfer: ValueError


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
        for operation in _REQUIRED:
            self.transfers.meta.events.register(f"after-call.s3.{operation}", _refuse_cut_reply)
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
                if error_code(exc) in MISSING:
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
                    raise Incomplete("a listing reply without its body")
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
                if error_code(exc) in MISSING:
                    return None, None
                raise
            with contextlib.closing(response["Body"]) as body:
                data = body.read()  # botocore checks the length against Content-Length, when there is one
            if response.get("ContentLength") is None or "ETag" not in response:
                raise Incomplete("a reply without its Content-Length or ETag header")
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
                if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"):
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
                problem, transient = fault_of(exc)
                if problem is None:
                    raise  # not a storage fault: a bug, or one of the job's own errors
                pause = _backoff.uniform(0, min(10.0, 0.25 * 2**attempt))
                spent = time.monotonic() - started
                if not transient or attempt >= self.max_attempts or spent + pause > self.retry_seconds:
                    gave_up = f" (gave up after {attempt} attempts in {spent:.0f} s)" if transient and attempt > 1 else ""
                    raise StorageError(problem + gave_up, where=self.url(key)) from exc
                log.warning("storage: %s: %s; retrying in %.1f s (attempt %d)", self.url(key), problem, pause, attempt + 1)
                time.sleep(pause)


# ---------------------------------------------------------------------------------------------- runs


