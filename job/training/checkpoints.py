"""Checkpoints in storage, resuming from them, and stopping cleanly on SIGTERM.

Every checkpoint Trainer saves (every `checkpoint.every_steps` steps, every `checkpoint.every_minutes`,
and once on SIGTERM) is uploaded to `<output>/<run-id>/checkpoints/checkpoint-<step>/` and only then
marked complete with its own `_SUCCESS` manifest, exactly like a run. The newest `checkpoint.keep`
complete checkpoints stay; older ones, and incomplete ones a killed upload left, are deleted.

A run first looks for its latest complete checkpoint (in Kubernetes the run id comes from the Job, so
a replacement pod finds what its predecessor saved) and resumes model, optimizer, scheduler, RNG and
data position from it. Incomplete checkpoints are never used.

Uploads run on a background thread from a hard-linked snapshot of the checkpoint directory: training
goes on meanwhile, and Trainer's local rotation cannot delete a file that is still being uploaded. Only
a SIGTERM (and the end of the run) waits for them. Deleting the older checkpoints runs on a thread of
its own that nothing waits for on SIGTERM: a deletion held up by storage must not spend the grace
period (what it leaves, the next attempt's saves or the finished run delete). A checkpoint whose
upload fails (storage down past the retries) does not end the run: it is logged, training goes on,
and the next save uploads a newer one; only the final publish may end a run with exit 6.

On SIGTERM the grace period is for the checkpoint: training stops at the step boundary, saves and
uploads, and neither evaluates (Trainer would, at the end of the cut-short epoch) nor predicts.

A SIGTERM outside the training loop (loading data, uploading, scoring the champion, retrying a storage
fault) stops the job at once: the handler raises `Stopped`, which unwinds whatever is running, and the
job exits 10 within seconds. Nothing is taken for finished without `_SUCCESS`, so a rerun continues.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from job import storage
from job.config import CheckpointConfig
from job.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
DOWNLOAD_ATTEMPTS = 3  # a checkpoint that does not match its manifest is downloaded again
_STEP = re.compile(r"/checkpoint-(\d+)/")


class Stopped(KeyboardInterrupt):
    """Raised by the SIGTERM/SIGINT handler outside training. A KeyboardInterrupt, so that no library's
    `except Exception` swallows it; the command line turns it into exit 10."""


class StopRequest:
    """SIGTERM/SIGINT: while training (`deferred()`), remembered, and training stops at the next step
    boundary after a checkpoint; anywhere else, `Stopped` is raised at once."""

    def __init__(self):
        self.signal_name: str | None = None
        self.deferring = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.signal_name is None
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if not self.deferring:
            self.raise_if_stopped()
        if first:
            log.warning("%s received: saving a checkpoint at the next step, then stopping", self.signal_name)

    @contextlib.contextmanager
    def deferred(self):
        """The training loop: a signal waits for the next step boundary (and its checkpoint)."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def raise_if_stopped(self) -> None:
        """Raise `Stopped` if a signal came (one that came too late for the training loop to act on)."""
        if self.signal_name is not None:
            raise Stopped(f"{self.signal_name} received; nothing was published without _SUCCESS: run again with the same run id to continue")

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


def prefix(run_id: str, step: int | None = None) -> str:
    return storage.join(run_id, FOLDER, f"checkpoint-{step}" if step is not None else "")


def complete_steps(store, run_id: str) -> tuple[list[int], list[int]]:
    """(complete, incomplete) checkpoint steps of a run, each sorted ascending."""
    steps: dict[int, bool] = {}
    for key in store.list(prefix(run_id)):
        found = _STEP.search("/" + key)
        if found:
            step = int(found.group(1))
            steps[step] = steps.get(step, False) or key.endswith(f"/{storage.SUCCESS}")
    return sorted(s for s, done in steps.items() if done), sorted(s for s, done in steps.items() if not done)


def fetch_latest(store, run_id: str, dest: Path, config_sha: str) -> tuple[Path | None, dict | None]:
    """Download the run's latest complete checkpoint (verified against its manifest): (its local
    directory, its manifest), or (None, None)."""
    complete, incomplete = complete_steps(store, run_id)
    if incomplete and (not complete or incomplete[-1] > complete[-1]):
        log.warning("checkpoint: ignoring incomplete checkpoint-%d (its upload never finished)", incomplete[-1])
    if not complete:
        return None, None
    step = complete[-1]
    manifest = storage.read_manifest(store, prefix(run_id, step))
    if manifest.get("config_sha256") != config_sha:
        raise ConfigError(
            f"checkpoint-{step} of run {run_id} was saved with a different config; use a new run id",
            where="run_id",
        )
    local = dest / f"checkpoint-{step}"
    if _mismatched(local, manifest):  # else another worker of this node (or an earlier attempt) fetched it
        _download(store, prefix(run_id, step), local, manifest)
    log.info("checkpoint: resuming from checkpoint-%d (step %d) of %s", step, manifest["step"], store.url(run_id))
    return local, manifest


def _download(store, key: str, local: Path, manifest: dict) -> None:
    """Download the checkpoint at `key` into `local`, again while it does not match its manifest."""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        shutil.rmtree(local, ignore_errors=True)
        store.download(key, local)
        wrong = _mismatched(local, manifest)
        if not wrong:
            return
        # Seen under make chaos: a download that raised nothing did not match the manifest (which cut
        # reply got through was not found). The manifest is what tells: download the checkpoint again.
        if attempt == DOWNLOAD_ATTEMPTS:
            raise StorageError(f"downloaded checkpoint does not match its manifest {DOWNLOAD_ATTEMPTS} times "
                               f"({', '.join(wrong[:3])})", where=store.url(key))
        log.warning("checkpoint: %s downloaded with %s not matching its manifest; downloading it again (attempt %d)",
                    local.name, ", ".join(wrong[:3]), attempt + 1)


def batch_of(args) -> dict:
    """The run's global batch and how this attempt makes it up, as every checkpoint manifest records it."""
    return {
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "world_size": args.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "dataloader_num_workers": getattr(args, "dataloader_num_workers", 0),
    }


def keep_global_batch(args, manifest: dict | None, streamed: bool = False) -> None:
    """The global batch is a property of the run, not of the attempt: resumed on another world size,
    the per-device batch and gradient accumulation are derived to keep it (then every optimizer step
    trains on the same rows in the same order as before, and the run resumes at the same sample), and
    the log says so; where no split keeps it exactly, a config error naming the numbers. NeMo and
    Megatron keep the global batch likewise; Trainer alone would silently change it."""
    if not manifest or "global_batch_size" not in manifest:
        return  # a checkpoint from before the job recorded it: nothing to compare with
    if streamed:
        _same_stream_readers(args, manifest)
    wanted, world = manifest["global_batch_size"], args.world_size
    configured = batch_of(args)["global_batch_size"]  # what this attempt's own settings would make
    if configured == wanted and world == manifest["world_size"]:
        return
    was = (f"{manifest['world_size']} x {manifest['per_device_train_batch_size']} per device x "
           f"{manifest['gradient_accumulation_steps']} accumulation")
    if wanted % world:
        raise ConfigError(
            f"checkpoint-{manifest['step']} was trained with a global batch of {wanted} ({was}); a world size of {world} "
            f"cannot keep it ({wanted} is not a multiple of {world}): resume on a world size that divides {wanted}",
            where="distributed.nproc_per_node",
        )
    per_worker = wanted // world
    if configured != wanted:  # the config's own split gives another global batch
        per_device = max(d for d in range(1, min(per_worker, args.per_device_train_batch_size) + 1) if per_worker % d == 0)
        args.per_device_train_batch_size, args.gradient_accumulation_steps = per_device, per_worker // per_device
    per_device = args.per_device_train_batch_size
    if args.process_index == 0:
        log.warning("resume: world size %d (was %d): global batch %d kept as %d x %d per device x %d accumulation (was %s); "
                    "resuming at step %d, sample %d of the run", world, manifest["world_size"], wanted, world, per_device,
                    per_worker // per_device, was, manifest["step"], manifest["step"] * wanted)


def _same_stream_readers(args, manifest: dict) -> None:
    """A stream resumes from each worker's saved position in its part of the stream, and which part
    that is depends on the world size (datasets gives each worker whole files where they divide
    evenly, else every world-size-th row) and on the DataLoader workers (each reads its own files, in
    turn): no position of one split says where another would be."""
    was = (manifest["world_size"], manifest.get("dataloader_num_workers", args.dataloader_num_workers))
    if was != (args.world_size, args.dataloader_num_workers):
        raise ConfigError(
            f"checkpoint-{manifest['step']} read a stream on world size {was[0]} with {was[1]} DataLoader workers each; a "
            "stream resumes only as it was read (its row order depends on both): resume on world size "
            f"{was[0]} with training.dataloader_num_workers {was[1]}",
            where="distributed.nproc_per_node" if was[0] != args.world_size else "training.dataloader_num_workers",
        )


def _mismatched(local: Path, manifest: dict) -> list[str]:
    """The manifest's files that are missing under `local` or differ in size or sha256."""
    wrong = []
    for entry in manifest["files"]:
        path = local / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"] or storage.sha256_file(path) != entry["sha256"]:
            wrong.append(entry["path"])
    return wrong


def publisher(store, run_id: str, settings: CheckpointConfig, stop: StopRequest, config_sha: str, work: Path,
              batch: dict | None = None):
    """The TrainerCallback that decides when to save and ships every saved checkpoint to storage.
    `batch` (the run's global batch and how this attempt makes it up) goes into every manifest."""
    from transformers import TrainerCallback

    batch = batch or {}

    class Publisher(TrainerCallback):
        def __init__(self):
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
            self.uploads: list[Future] = []
            self.last_save = time.monotonic()
            self.stopped_at: int | None = None
            self.uploaded: int | None = None  # the step of the last checkpoint uploaded whole
            self.cleanups: queue.Queue[int] = queue.Queue()  # steps uploaded whole: delete what is older
            # A daemon thread, not a pool's: the interpreter does not wait for it at exit.
            threading.Thread(target=self._clean, name="checkpoint-cleanup", daemon=True).start()

        def on_step_end(self, args, state, control, **kwargs):
            self._raise_failed_upload()
            minutes = settings.every_minutes
            due = minutes is not None and time.monotonic() - self.last_save >= minutes * 60
            # Every worker must stop (and save) at the same step, or the next collective hangs.
            due, stopping = _agree(args.device, due, stop.requested)
            if stopping:
                control.should_save = control.should_training_stop = True
                control.should_evaluate = False  # the grace period is for the checkpoint
                self.stopped_at = state.global_step
            elif due:
                control.should_save = True
            if control.should_save:
                # Flush the running loss into the log history the checkpoint carries, so a resumed
                # run can still report the loss of the whole run (whole_run_loss).
                control.should_log = True

        def on_epoch_end(self, args, state, control, **kwargs):
            # Stopping ends the epoch early, and Trainer would evaluate (eval_strategy: epoch) after
            # the checkpoint was saved and before it is uploaded: no evaluation, no second save.
            if self.stopped_at is not None:
                control.should_evaluate = control.should_save = False

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()
            _barrier()  # every worker has written its part (RNG state) of the checkpoint
            if not state.is_world_process_zero:
                return
            source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            snapshot = work / "uploading" / source.name
            shutil.rmtree(snapshot, ignore_errors=True)
            _link_tree(source, snapshot)
            # training_args.bin pickles every TrainingArguments field, hub_token included; resuming
            # does not read it, so it never leaves this machine.
            (snapshot / "training_args.bin").unlink(missing_ok=True)
            upload = self.pool.submit(self._upload, snapshot, state.global_step)
            upload.checkpoint = source.name
            self.uploads.append(upload)

        def _upload(self, snapshot: Path, step: int) -> None:
            try:
                storage.publish(snapshot, store, prefix(run_id, step), extra={"step": step, "config_sha256": config_sha, **batch})
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)
            self.uploaded = step
            self.cleanups.put(step)

        def _clean(self) -> None:
            while True:
                step = self.cleanups.get()
                try:
                    self._delete_older_than(step)
                finally:
                    self.cleanups.task_done()

        def _delete_older_than(self, step: int) -> None:
            try:
                complete, incomplete = complete_steps(store, run_id)
                for old in complete[: -settings.keep] + [s for s in incomplete if s < step]:
                    if stop.requested:
                        return  # stopping: the grace period is not for housekeeping
                    # The marker goes first: a half-deleted checkpoint must already look incomplete.
                    store.delete(storage.join(prefix(run_id, old), storage.SUCCESS))
                    storage.delete_tree(store, prefix(run_id, old))
            except StorageError as exc:
                log.warning("checkpoint: older checkpoints could not be deleted (%s); the next save tries again", exc.format_message())

        def _raise_failed_upload(self) -> None:
            for upload in [u for u in self.uploads if u.done()]:
                self.uploads.remove(upload)
                self._outcome(upload)

        def _outcome(self, upload: Future) -> None:
            """A checkpoint that could not be uploaded is logged, not fatal: the next save tries again
            (a bug in the upload is still raised)."""
            try:
                upload.result()
            except StorageError as exc:
                log.warning("checkpoint: %s could not be uploaded (%s); training goes on, the next save tries again",
                            upload.checkpoint, exc.format_message())

        def wait(self) -> None:
            """Block until every upload has finished (failures are logged); not for the deletions."""
            for upload in self.uploads:
                self._outcome(upload)
            self.uploads.clear()

        def wait_for_cleanup(self) -> None:
            """Block until the older checkpoints are deleted (at the end of a run that was not stopped:
            `checkpoint.keep` holds for what stays; a SIGTERM meanwhile stops the job, as anywhere)."""
            self.cleanups.join()

    return Publisher()


def whole_run_loss(log_history: list[dict], resumed_step: int, tail_loss: float, global_step: int) -> float:
    """Trainer's train_loss covers only the steps since the resume; add back the steps before it,
    from the losses logged up to the checkpoint (each the mean over the steps since the last log)."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry["step"] <= resumed_step:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    if last != resumed_step:  # a checkpoint saved without a log at its step: the head is unknown
        return tail_loss
    return (total + tail_loss * (global_step - resumed_step)) / global_step


def _agree(device, *flags: bool) -> tuple[bool, ...]:
    """True for a flag when any worker has it (a no-op without torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flags
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values.tolist())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link a directory tree (instant, no extra space); copy where links are impossible."""

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


def step_of(checkpoint: Path | None) -> int | None:
    """The global step a local checkpoint directory holds (None for no checkpoint)."""
    if checkpoint is None:
        return None
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
