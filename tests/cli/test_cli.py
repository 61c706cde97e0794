"""The command line itself: fast help, lazy imports, every subcommand answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import base_env
from job.cli.root import COMMANDS

HEAVY = ("torch", "transformers", "datasets", "boto3", "botocore", "sklearn", "s3fs", "accelerate", "mlflow")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=60)


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from job.cli.root import main\n"
        "sys.argv = ['finetune-job', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help_without_heavy_imports(command):
    code = (
        "import sys\n"
        "from job.cli.root import main\n"
        f"sys.argv = ['finetune-job', {command!r}, '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: finetune-job " + command in proc.stdout
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_console_script_and_module_agree():
    import shutil

    script = shutil.which("finetune-job", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert script, "console script finetune-job is not installed"
    a = subprocess.run([script, "--help"], capture_output=True, text=True, env=base_env())
    b = subprocess.run([sys.executable, "-m", "job", "--help"], capture_output=True, text=True, env=base_env())
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


def test_unknown_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "job", "trian"], env=base_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "No such command 'trian'" in proc.stderr
    assert "Traceback" not in proc.stderr
