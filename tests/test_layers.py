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


HEAVY = ("torch", "transformers", "datasets", "boto3", "botocore", "peft", "matplotlib", "numpy", "sklearn")


def _top_level_imports(path: Path) -> set[str]:
    """The top-level packages a module imports at import time (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _module_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        for candidate in (JOB.joinpath(*parts[:n]).with_suffix(".py"), JOB.joinpath(*parts[:n], "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def lazy_imports_of_light_modules() -> list[str]:
    """Function-body imports of job modules that import no heavy library at their top: such a lazy
    import saves nothing and hides an arrow from the reader."""
    problems = []
    for path in sorted(JOB.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("job"):
                    continue
                for alias in node.names:  # `from job.models import pooled` imports job.models.pooled
                    target = f"{node.module}.{alias.name}"
                    found = _module_file(target)
                    if found is None or found.name == "__init__.py" and node.module != "job":
                        target, found = node.module, _module_file(node.module)
                    if found is not None and not _top_level_imports(found) & set(HEAVY):
                        problems.append(f"{path.relative_to(JOB.parent)}:{node.lineno}: lazy import of {target}")
    return problems


def test_job_modules_are_imported_lazily_only_to_defer_a_heavy_library():
    assert lazy_imports_of_light_modules() == []


def test_the_checker_tells_a_lazy_import_that_saves_nothing(tmp_path, monkeypatch):
    fake = tmp_path / "job"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "light.py").write_text("import json\n")
    (fake / "models" / "heavy.py").write_text("import torch\n")
    (fake / "models" / "user.py").write_text(
        "def f():\n    from job.models import light\n\ndef g():\n    from job.models import heavy\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "JOB", fake)
    assert lazy_imports_of_light_modules() == ["job/models/user.py:2: lazy import of job.models.light"]
