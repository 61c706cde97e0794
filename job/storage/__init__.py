"""Level 2 of the job (../shared/LAYOUT.md): where runs are kept. May import job.config and job.errors.

stores.py (a local directory or an S3 bucket behind one interface, every S3 operation one retried
unit), faults.py (what a storage failure means: missing, transient, final), layout.py (a published
run: files first, the `_SUCCESS` manifest last; the writability probe), workdir.py (private local
scratch). The names below are the folder's interface: `from job import storage; storage.publish(...)`.
"""

from job.storage.faults import fault_behind  # noqa: F401
from job.storage.layout import (  # noqa: F401
    PROBE,
    SUCCESS,
    delete_tree,
    json_line,
    probe,
    publish,
    read_manifest,
    replace_file,
    sha256_file,
)
from job.storage.stores import LocalStore, S3Store, fsspec_options, glob_s3, join, open_store  # noqa: F401
