"""Where runs are published: a local directory or an S3-compatible bucket, behind one small interface.

A run is finished when, and only when, `<uri>/<run-id>/_SUCCESS` exists. `publish` uploads every file
first and writes `_SUCCESS` last; it lists each file with its size and sha256, so a reader can verify
what it downloads. Anything without `_SUCCESS` (a killed pod, a failed upload) is not a finished run.

S3 goes through boto3 and the standard AWS configuration: credentials from the usual chain,
`AWS_ENDPOINT_URL` (or `s3.endpoint_url`) for S3-compatible stores, botocore's standard retry mode, and
multipart uploads above `s3.multipart_threshold_mb`. Credentials never pass through this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from job import env
from job.config import S3Config
from job.errors import StorageError

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
PROBE = ".finetune-job-probe"
LOCK = ".finetune-job.lock"  # local stores: held while a conditional write checks and renames


def open_store(uri: str, s3: S3Config):
    """The store for an output URI: S3Store for s3://bucket/prefix, LocalStore for a path."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        return S3Store(bucket, prefix.strip("/"), s3)
    return LocalStore(Path(uri))


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


# ---------------------------------------------------------------------------------------------- local


def _file_mode() -> int:
    """What open() would give a new file under this process's umask (mkstemp's 0600 is too strict
    for outputs other users or containers read)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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


def _botocore_config(s3: S3Config):
    from botocore.config import Config

    # Path-style addressing for S3-compatible stores (MinIO, SeaweedFS, Ceph): their hostnames rarely
    # resolve per bucket. AWS itself (no endpoint set) keeps virtual-hosted style.
    addressing = {"addressing_style": "path"} if _endpoint(s3) else {}
    return Config(
        retries={"mode": "standard", "max_attempts": s3.max_attempts},
        connect_timeout=10,
        read_timeout=120,
        s3=addressing,
    )


def fsspec_options(s3: S3Config) -> dict:
    """s3fs storage_options equivalent to the boto3 client used for outputs."""
    client_kwargs = {k: v for k, v in {"endpoint_url": _endpoint(s3), "region_name": s3.region}.items() if v}
    config_kwargs = {"retries": {"mode": "standard", "max_attempts": s3.max_attempts}, "connect_timeout": 10}
    if _endpoint(s3):
        config_kwargs["s3"] = {"addressing_style": "path"}
    return {"client_kwargs": client_kwargs, "config_kwargs": config_kwargs}


def glob_s3(pattern: str, s3: S3Config) -> list[str]:
    """Expand an s3:// glob with s3fs (the same filesystem datasets reads through)."""
    import s3fs

    fs = s3fs.S3FileSystem(**fsspec_options(s3))
    try:
        matches = fs.glob(pattern[5:]) if any(c in pattern for c in "*?[") else [pattern[5:]] if fs.isfile(pattern[5:]) else []
    except PermissionError as exc:
        raise StorageError(f"access denied ({exc})", where=pattern) from exc
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot list ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", where=pattern) from exc
    return [f"s3://{m}" for m in sorted(matches)]


class S3Store:
    def __init__(self, bucket: str, prefix: str, s3: S3Config):
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{join(bucket, prefix)}"
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=_endpoint(s3), region_name=s3.region, config=_botocore_config(s3)
        )
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
        with self._errors(key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)

    def put_bytes(self, data: bytes, key: str) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        return self.get_with_etag(key)[0]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def list(self, prefix: str) -> list[str]:
        return sorted(obj["Key"][len(self.prefix) + 1 :] if self.prefix else obj["Key"] for obj in self._objects(prefix))

    def _objects(self, prefix: str):
        """Every object under `prefix` (a folder: `runs` does not match `runs-old/...`), page by page."""
        base = self._key(prefix)
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + "/" if base else ""):
                yield from page.get("Contents", [])

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def download(self, prefix: str, dest: Path) -> None:
        keys = self.list(prefix)
        if not keys:
            raise StorageError("no objects under this prefix", where=self.url(prefix))
        for key in keys:
            target = dest / key[len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._errors(key):
                self.client.download_file(self.bucket, self._key(key), str(target), Config=self.transfer)

    def get_with_etag(self, key: str) -> tuple[bytes | None, str | None]:
        """The object and its ETag, for `put_if`."""
        with self._errors(key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except self.client.exceptions.NoSuchKey:
                return None, None
            return response["Body"].read(), response["ETag"]

    def put_if(self, data: bytes, key: str, etag: str | None) -> bool:
        """Compare-and-swap with S3 conditional writes: `If-Match: etag`, or `If-None-Match: *` when
        `etag` is None. False when another writer got there first (412, or 409 for a concurrent one)."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        with self._errors(key):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                    return False
                raise
        return True

    def modified(self, prefix: str) -> dt.datetime | None:
        """When anything under `prefix` was last written (None when nothing is there)."""
        return max((obj["LastModified"] for obj in self._objects(prefix)), default=None)

    @contextlib.contextmanager
    def _errors(self, key: str):
        """botocore failures as one-line storage errors naming the object."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            raise StorageError(f"{code}: {error.get('Message') or exc.operation_name}", where=self.url(key)) from exc
        except S3UploadFailedError as exc:
            raise StorageError(f"upload failed: {str(exc).splitlines()[0]}", where=self.url(key)) from exc
        except BotoCoreError as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}", where=self.url(key)) from exc


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
