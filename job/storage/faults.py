"""What a storage failure means: missing (404), transient (5xx, throttling, a refused, reset or cut
reply: retried), or final (a refusal). botocore gives no narrower exception for a cut reply, so some
of it is recognised by where it was raised."""

from __future__ import annotations

import builtins
import contextlib
import os

from job.errors import first_line

# 4xx answers a retry can change: a timeout, throttling.
_RETRIED_4XX = {"408", "429", "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException"}
MISSING = ("404", "NoSuchKey", "NotFound")  # a cut 404 reply arrives with its bare status as the code


class Incomplete(Exception):
    """A reply that parsed but lacks what every complete one has (its headers or body were cut)."""


def client_error(exc: BaseException | None):
    """The botocore ClientError behind `exc` (boto3's transfer errors wrap one), or None."""
    from botocore.exceptions import ClientError

    while exc is not None and not isinstance(exc, ClientError):
        exc = exc.__cause__ or exc.__context__
    return exc


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a failed request: "NoSuchKey", or the bare status ("404") of a cut reply."""
    error = client_error(exc)
    if error is None:
        return None
    return str(error.response.get("Error", {}).get("Code") or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def fault_of(exc: BaseException) -> tuple[str | None, bool]:
    """(one line saying what failed, is it transient?) for a storage fault; (None, False) for anything
    else. Transient: 5xx and throttling answers, and every failure to get a whole reply (refused or reset
    connections, timeouts, cut bodies or headers). Not transient: refusals (403), bad requests, missing
    credentials, a local file that cannot be read."""
    from botocore.exceptions import BotoCoreError

    error = client_error(exc)
    if error is not None:
        code = error_code(error)
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        message = error.response.get("Error", {}).get("Message") or error.operation_name
        if error.operation_name == "CompleteMultipartUpload" and 400 <= status < 500 and code not in ("403", "AccessDenied"):
            # The parts as the client recorded them were refused (a part's reply was cut, its ETag
            # lost or garbled; or the upload was completed by a try whose reply was lost): the file
            # is uploaded again from its start, within the unit's attempts.
            return f"{code}: {message} (completing the multipart upload was refused; uploading the whole file again)", True
        return f"{code}: {message}", status >= 500 or code in _RETRIED_4XX or (code.isdigit() and int(code) >= 500)
    if isinstance(exc, cut_reply_errors()) or garbled_reply(exc):
        return f"{type(exc).__name__}: {first_line(exc)}", True
    if isinstance(exc, (BotoCoreError, OSError)):  # no credentials, a bad parameter, a local file: retrying cannot help
        return f"{type(exc).__name__}: {first_line(exc)}", False
    return None, False


def cut_reply_errors() -> tuple[type, ...]:
    """What botocore, boto3's transfers, urllib3 and aiohttp (s3fs) raise when no whole reply came back."""
    import socket

    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError
    from botocore.parsers import ResponseParserError
    from urllib3.exceptions import HTTPError

    errors = (HTTPClientError, ConnectionError, IncompleteReadError, ResponseParserError, RetriesExceededError,
              S3UploadFailedError, HTTPError, Incomplete, builtins.ConnectionError, TimeoutError, socket.timeout)
    with contextlib.suppress(ImportError):
        import aiohttp

        errors += (aiohttp.ClientError,)
    return errors


def garbled_reply(exc: BaseException) -> bool:
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
        if isinstance(exc, ClientError) and error_code(exc) not in MISSING:
            return exc
        if isinstance(exc, cut_reply_errors() + (BotoCoreError,)) or garbled_reply(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None

