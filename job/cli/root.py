"""The `finetune-job` command line. The root only registers commands; each lives in its own module of job/cli/.

Commands load lazily, so `finetune-job --help` imports no torch, transformers, datasets or boto3.
User errors end as one line and the exit code of their kind (job/errors.py); `--debug` adds the
traceback. Unexpected errors are bugs: they exit 1 with the traceback.
"""

from __future__ import annotations

import gc
import importlib
import logging
import signal
import sys

import click

from job import errors
from job.cli import logs as job_log
from job.config import env
from job.training import launch

COMMANDS = {
    "run": "job.cli.run",
    "check": "job.cli.check",
    "config": "job.cli.show_config",
    "predict": "job.cli.predict",
    "champion": "job.cli.champion",
    "promote": "job.cli.promote",
    "rollback": "job.cli.rollback",
}

log = logging.getLogger("job")
_debug = False


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or its help is shown)."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name]).command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="finetune-job")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="FINETUNE_LOG_FORMAT",
    show_default=True,
    help="json: one JSON object per line, for log collectors.",
)
@click.option("--debug", is_flag=True, envvar="FINETUNE_DEBUG", help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, log_format: str, debug: bool) -> None:
    """Fine-tune a Hugging Face model from a config file and publish the model, predictions and
    metrics to a local directory or S3-compatible storage.

    With no config at all, `finetune-job run` trains a tiny model on the shipped demo data.
    Exit codes: 0 done, 1 internal error, 2 usage, 3 config, 4 data, 5 model, 6 storage,
    10 interrupted (checkpoint saved; rerun to resume).
    """
    global _debug
    _debug = debug
    job_log.setup(log_format, debug)
    ctx.obj = {"log_format": log_format, "debug": debug}


def entry() -> None:
    """The console script and `python -m job`: main(), then nothing left for the interpreter's exit to
    collect. Exiting, CPython runs one last full garbage collection over every object still alive (after
    a run, over half a million: torch, transformers, datasets), 1.4 s of every run's wall on two cores.
    Frozen, they are left to reference counting and the operating system; atexit handlers (log
    flushing, temporary folders) run as before. Tests call main() in their own process, unfrozen."""
    try:
        main()
    finally:
        gc.freeze()


def main() -> None:
    # SIGTERM before the run installs its own handler (job/training/checkpoints.py), while modules load: exit 10
    # like any interruption outside training, not death by signal.
    signal.signal(signal.SIGTERM, _interrupt_at_start)
    try:
        cli.main(prog_name="finetune-job", standalone_mode=False)
    except errors.JobError as exc:
        _fail(exc.format_message(), exc.exit_code, exc)
    except click.exceptions.Abort as exc:  # click's word for Ctrl-C, and for SIGTERM outside training
        stopped = str(exc.__cause__ or "")  # job/training/checkpoints.py: Stopped says what to do next
        _fail(f"interrupted: {stopped}" if stopped else "aborted", errors.EXIT_INTERRUPTED, None)
    except click.ClickException as exc:  # usage errors: click prints them with the usage line
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", errors.EXIT_INTERRUPTED, None)
    except Exception as exc:
        if launch.peer_lost(exc):  # another worker failed first: it says why, the agent says which
            _fail(f"worker {env.rank()}: stopped, its connection to another worker closed (that one failed first)",
                  errors.EXIT_PEER_LOST, exc)
        # a bug, not a user mistake: keep the traceback
        launch.record_failure(errors.EXIT_INTERNAL, f"internal error: {type(exc).__name__}")
        log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=True, extra={"exit_code": errors.EXIT_INTERNAL})
        sys.exit(errors.EXIT_INTERNAL)
    sys.exit(0)


def _interrupt_at_start(signum, frame) -> None:
    raise KeyboardInterrupt


def _fail(message: str, code: int, exc: BaseException | None) -> None:
    launch.record_failure(code, message)
    if logging.getLogger().handlers:
        log.error(message, exc_info=exc if _debug else None, extra={"exit_code": code})
    else:  # failed before logging was set up
        click.echo(message, err=True)
    sys.exit(code)
