"""The imports of job/ point one way down (../shared/LAYOUT.md): a folder imports only folders below it.

Every module under job/ is parsed with `ast`, function-body imports included, and each import of a
job module is checked against the level table. models/ and tasks/ are siblings that never import each
other. A module that is not in the table fails too, so a new folder has to be placed on purpose.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

JOB = Path(__file__).resolve().parents[1] / "job"

LEVELS = {
    "errors": 0,
    "config": 1,
    "storage": 2,
    "data": 3,
    "models": 4,
    "tasks": 4,
    "training": 5,
    "retraining": 6,
    "recipes": 7,
    "demo": 7,  # the shipped demo data and the script that writes it (python -m job.demo.generate)
    "cli": 8,
    "__main__": 9,
    "__init__": 9,  # job/__init__.py: the package's version, imports nothing of its own
}


def _floor(module: str) -> str:
    """The folder (or top-level module) of a dotted job module: job.storage.stores -> storage."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, job module) for every import of a job module in `path`, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(("job", *path.relative_to(JOB).with_suffix("").parts[:-1]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("job.")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            if base == "job":  # from job import storage, tasks
                found += [(node.lineno, f"job.{alias.name}") for alias in node.names]
            elif base.startswith("job."):
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted(JOB.rglob("*.py")):
        module = ".".join(("job", *path.relative_to(JOB).with_suffix("").parts))
        mine = _floor(module)
        if mine not in LEVELS:
            problems.append(f"{path.relative_to(JOB.parent)}: job/{mine} has no level in LEVELS")
            continue
        for line, target in _imports(path):
            theirs = _floor(target)
            if theirs == mine:
                continue
            if theirs not in LEVELS:
                problems.append(f"{path.relative_to(JOB.parent)}:{line}: imports {target}, which has no level")
            elif LEVELS[theirs] >= LEVELS[mine]:
                problems.append(
                    f"{path.relative_to(JOB.parent)}:{line}: {mine} (level {LEVELS[mine]}) imports {target} "
                    f"(level {LEVELS[theirs]}): imports point down only"
                )
    return problems


def test_imports_point_down_only():
    assert violations() == []


def test_the_checker_sees_function_body_imports(tmp_path, monkeypatch):
    """An upward import inside a function is found: the checker itself can fail."""
    fake = tmp_path / "job"
    (fake / "config").mkdir(parents=True)
    (fake / "config" / "bad.py").write_text("def f():\n    from job.retraining import champion\n")
    (fake / "tasks").mkdir()
    (fake / "tasks" / "sideways.py").write_text("from job.models import lora\n")
    monkeypatch.setattr(sys.modules[__name__], "JOB", fake)
    found = violations()
    assert any("job/config/bad.py:2: config (level 1) imports job.retraining.champion" in p for p in found), found
    assert any("job/tasks/sideways.py:1: tasks (level 4) imports job.models.lora" in p for p in found), found
