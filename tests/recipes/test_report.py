"""report.html: self-contained, the same plots as the PNG files, and rendered by a real headless browser.

The browser test runs Debian's `chromium` (.ci/run installs it). Without it the test is skipped locally
and fails in CI (CI=true). It keeps a screenshot in test-artifacts/report.png.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from conftest import ROOT, base_env, run_cli_here, skip_or_fail, tiny_config, write_yaml

PLOTS = ("data", "token_lengths", "loss", "confusion_matrix", "per_class", "promotion")
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two local runs: a good one (champion), then a worse one whose report shows the champion kept."""
    tmp = tmp_path_factory.mktemp("report")
    for run_id, training in (("first", {"num_train_epochs": 6}), ("second", {"max_steps": 1, "learning_rate": 1e-6})):
        cfg = tiny_config(str(tmp / "runs"), promotion={"metric": "test_accuracy"})
        cfg["training"].update(training)
        run_cli_here("run", "--config", str(write_yaml(tmp / f"{run_id}.yaml", cfg)),
                     env=base_env(FINETUNE_RUN_ID=run_id), cwd=tmp, check=True)
    return tmp / "runs"


def test_the_report_is_self_contained_and_embeds_the_png_files(runs):
    for run_id in ("first", "second"):
        page = (runs / run_id / "report.html").read_text()
        assert "<script" not in page and "<link" not in page and "url(" not in page
        assert re.findall(r'(?:src|href)="(?!data:)', page) == []  # nothing to fetch
        embedded = dict(re.findall(r'data-plot="(\w+)" src="data:image/png;base64,([^"]+)"', page))
        assert sorted(embedded) == sorted(PLOTS)
        for name, encoded in embedded.items():
            assert base64.b64decode(encoded) == (runs / run_id / "plots" / f"{name}.png").read_bytes(), name


def test_the_report_says_what_the_gate_decided(runs):
    first = (runs / "first" / "report.html").read_text()
    assert "<b>Promoted.</b> there is no champion yet" in first
    second = (runs / "second" / "report.html").read_text()
    assert "<b>Champion kept.</b> test_accuracy " in second and "for champion first on the same rows" in second
    assert "<title>finetune-job run second</title>" in second
    assert re.search(r"<tr><th>accuracy</th><td class=\"num\">0\.\d{4}</td><td class=\"num\">0\.\d{4}</td></tr>", second)


def test_plots_the_task_cannot_draw_are_named_not_dropped(tmp_path):
    """A run without labels or a loss history still gets a page, which says what is missing."""
    from datasets import Dataset

    from job.recipes import report
    from job.config import JobConfig

    split = Dataset.from_dict({"text": ["a b", "c d e"], "label": ["x", "y"]})
    features = Dataset.from_dict({"length": [4, 5]})
    spec = SimpleNamespace(label_column="label", label_names=["x", "y"], class_label=False)
    page = report.write(
        tmp_path, run_id="bare", cfg=JobConfig(), raw={"train": split, "validation": split, "test": split},
        features={"train": features, "validation": features, "test": features}, spec=spec, history=[], metrics={},
    ).read_text()
    assert sorted(p.stem for p in (tmp_path / "plots").iterdir()) == ["data", "token_lengths"]
    assert "the trainer logged no loss" in page
    assert "no confusion matrix (not a classification task, or the test rows have no labels)" in page
    assert "no promotion decision in metrics.json" in page


_LAUNCH = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Injected into a copy of the report: counts the images the browser decoded and any error it saw.
_PROBE = """<script>
window.__errors = [];
addEventListener("error", e => __errors.push(e.message || (e.target && e.target.tagName) || "error"), true);
addEventListener("load", () => {
  const images = Array.from(document.images);
  const drawn = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-probe", `drawn=${drawn} images=${images.length} errors=${__errors.length}`);
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        skip_or_fail("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    return found


def _browse(chromium: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"  # a fresh profile every launch
    return subprocess.run(
        [chromium, *_LAUNCH, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120,
        env={**base_env(), "HOME": str(tmp_path)},
    )


def _probe(chromium: str, tmp_path, page: str) -> str:
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + _PROBE, 1))
    proc = _browse(chromium, tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert found, f"the page did not finish loading: {proc.stderr[-2000:]}"
    return found.group(1)


def test_headless_chromium_renders_every_plot_without_errors(runs, tmp_path):
    import numpy as np
    from matplotlib.image import imread

    chromium = _chromium()
    page = (runs / "second" / "report.html").read_text()
    assert _probe(chromium, tmp_path, page) == f"drawn={len(PLOTS)} images={len(PLOTS)} errors=0"
    # The probe does see a broken plot: a truncated image decodes to nothing and raises an error event.
    broken = re.sub(r'(data-plot="loss" src="data:image/png;base64,)[^"]{200}', r"\1", page, count=1)
    assert _probe(chromium, tmp_path, broken) == f"drawn={len(PLOTS) - 1} images={len(PLOTS)} errors=1"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    proc = _browse(chromium, tmp_path, "--window-size=1200,2000", "--hide-scrollbars", f"--screenshot={shot}",
                   (runs / "second" / "report.html").as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 100  # plots, not a blank page
