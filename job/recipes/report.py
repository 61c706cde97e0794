"""report.html: what a run did, readable in seconds, in one self-contained file.

Every run writes `<run>/report.html` and the same plots as `<run>/plots/*.png`:

    data.png               rows per split, and the label distribution of each split
    token_lengths.png      tokens per row (after truncation to data.max_length)
    loss.png               training and evaluation loss by step (the Trainer's log history)
    confusion_matrix.png   test confusion matrix as a heatmap (classification)
    per_class.png          precision, recall and F1 per class on test (classification)
    promotion.png          the promotion decision: candidate against champion on the same rows

The HTML embeds the PNGs as data: URIs and its CSS inline, with no script and no external asset, so it
opens anywhere: from a bucket, an e-mail attachment, an air-gapped laptop. A plot whose data the task
does not produce (no labels, no confusion matrix) is left out and the page says why. Plots are drawn
with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
from collections import Counter
from pathlib import Path

from job.config import redacted
from job.data.rows import is_iterable
from job.retraining import promotion

log = logging.getLogger(__name__)

SAMPLE_ROWS = 200_000  # label and length statistics read at most this many rows per split
COLORS = {"train": "#4C72B0", "validation": "#DD8452", "test": "#55A868", "candidate": "#4C72B0", "champion": "#8C8C8C"}


def write(stage: Path, *, run_id: str, cfg, raw, features, spec, history: list[dict], metrics: dict) -> Path:
    """Draw the plots into `stage/plots/` and write `stage/report.html`; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    plots_dir = stage / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for title, name, draw in (
        ("Data", "data", lambda: _data(raw, spec)),
        ("Token lengths", "token_lengths", lambda: _lengths(features, cfg)),
        ("Loss", "loss", lambda: _loss(history)),
        ("Confusion matrix (test)", "confusion_matrix", lambda: _confusion(metrics)),
        ("Per-class metrics (test)", "per_class", lambda: _per_class(metrics)),
        ("Promotion", "promotion", lambda: _promotion(metrics, cfg)),
    ):
        figure, missing = draw()
        if figure is None:
            sections.append((title, None, missing))
            continue
        path = plots_dir / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        sections.append((title, path, None))
    report = stage / "report.html"
    report.write_text(_html(run_id, cfg, metrics, sections), encoding="utf-8")
    log.info("report: %s with %d plots", report.name, sum(1 for _, path, _ in sections if path))
    return report


# ---------------------------------------------------------------------------------------------- plots


def _figure(columns: int = 1, width: float = 7.0, height: float = 3.4):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(1, columns)
    return figure, axes


def _sample(ds):
    return ds if len(ds) <= SAMPLE_ROWS else ds.select(range(SAMPLE_ROWS))


def _data(raw, spec):
    import numpy as np

    sized = {name: ds for name, ds in raw.items() if not is_iterable(ds)}
    figure, (rows_ax, labels_ax) = _figure(columns=2, width=9)
    names = list(raw)
    counts = [len(raw[name]) if name in sized else 0 for name in names]
    bars = rows_ax.bar(names, counts, color=[COLORS.get(n, "#777") for n in names])
    rows_ax.bar_label(bars, labels=[f"{c:,}" if n in sized else "stream" for n, c in zip(names, counts)])
    rows_ax.set_title("rows per split")
    rows_ax.margins(y=0.15)

    column = getattr(spec, "label_column", None)
    per_split = {name: _label_counts(ds, column, spec) for name, ds in sized.items() if column in (ds.column_names or [])}
    per_split = {name: c for name, c in per_split.items() if c}
    if not per_split:
        labels_ax.set_axis_off()
        labels_ax.text(0.5, 0.5, "no labels to count", ha="center", va="center")
        return figure, None
    labels = list(getattr(spec, "label_names", None) or sorted({k for c in per_split.values() for k in c}))
    width = 0.8 / len(per_split)
    for i, (name, counter) in enumerate(per_split.items()):
        total = sum(counter.values())
        shares = [counter.get(label, 0) / total for label in labels]
        labels_ax.bar(np.arange(len(labels)) + i * width, shares, width, label=name, color=COLORS.get(name))
    labels_ax.set_xticks(np.arange(len(labels)) + width * (len(per_split) - 1) / 2, labels, rotation=30 if len(labels) > 4 else 0)
    labels_ax.set_ylabel("share of rows" if not _token_level(raw, column) else "share of tokens")
    labels_ax.set_title("label distribution")
    labels_ax.set_ylim(0, labels_ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
    labels_ax.legend(fontsize="small", ncols=len(per_split), loc="upper center")
    return figure, None


def _token_level(raw, column) -> bool:
    for ds in raw.values():
        if not is_iterable(ds) and column in (ds.column_names or []) and len(ds):
            return isinstance(ds[0][column], list)
    return False


def _label_counts(ds, column: str, spec) -> Counter:
    """Label names per row (or per token, for list-valued labels); ids are named when they index spec.label_names."""
    names = getattr(spec, "label_names", None) or []
    by_id = getattr(spec, "class_label", False)
    counts: Counter = Counter()
    for value in _sample(ds)[column]:
        for item in value if isinstance(value, list) else [value]:
            if item is None or item == -1:
                continue
            counts[names[item] if by_id and isinstance(item, int) and 0 <= item < len(names) else str(item)] += 1
    return counts


def _lengths(features, cfg):
    sized = {name: ds for name, ds in features.items() if not is_iterable(ds) and "length" in (ds.column_names or [])}
    if not sized:
        return None, "the tokenized splits have no length column (streamed data)"
    figure, ax = _figure()
    longest = 1
    for name, ds in sized.items():
        lengths = list(_sample(ds)["length"])
        longest = max(longest, max(lengths, default=1))
        ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), histtype="step", linewidth=1.8, density=True,
                label=f"{name} (median {sorted(lengths)[len(lengths) // 2] if lengths else 0})", color=COLORS.get(name))
    if cfg.data.max_length:
        ax.axvline(cfg.data.max_length, color="#C44E52", linestyle="--", label=f"max_length {cfg.data.max_length}")
    ax.set_xlabel("tokens per row")
    ax.set_ylabel("share of rows")
    ax.legend(fontsize="small")
    return figure, None


def _loss(history: list[dict]):
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evaluation = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evaluation:
        return None, "the trainer logged no loss"
    figure, ax = _figure()
    if train:
        ax.plot(*zip(*train), ".-" if len(train) < 30 else "-", label="training loss", color=COLORS["train"])
    if evaluation:
        ax.plot(*zip(*evaluation), "o-", label="evaluation loss", color=COLORS["validation"])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small")
    return figure, None


def _confusion(metrics: dict):
    import numpy as np

    matrix, labels = metrics.get("test_confusion_matrix"), metrics.get("test_labels")
    if not matrix or not labels:
        return None, "no confusion matrix (not a classification task, or the test rows have no labels)"
    matrix = np.array(matrix)
    size = min(9.0, 2.5 + 0.5 * len(labels))
    figure, ax = _figure(width=size + 1, height=size)
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if len(labels) <= 20:
        threshold = matrix.max() / 2
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return figure, None


def _per_class(metrics: dict):
    import numpy as np

    report = metrics.get("test_classification_report") or {}
    classes = [name for name, row in report.items() if isinstance(row, dict) and not name.endswith(" avg")]
    if not classes:
        return None, "no per-class report (not a classification task, or the test rows have no labels)"
    figure, ax = _figure(width=max(7.0, 1.2 * len(classes)))
    width = 0.27
    for i, measure in enumerate(("precision", "recall", "f1-score")):
        ax.bar(np.arange(len(classes)) + (i - 1) * width, [report[c][measure] for c in classes], width, label=measure)
    ax.set_xticks(range(len(classes)), [f"{c}\n(n={int(report[c]['support'])})" for c in classes])
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small", ncols=3, loc="lower right")
    return figure, None


def _promotion(metrics: dict, cfg):
    metric, candidate, champion = metrics.get("promotion_metric"), metrics.get("promotion_candidate"), metrics.get("promotion_champion")
    if metric is None:
        return None, "no promotion decision in metrics.json"
    bars = [("this run", candidate, COLORS["candidate"])]
    if metrics.get("promotion_champion_run"):
        bars.append((f"champion\n{metrics['promotion_champion_run']}", champion, COLORS["champion"]))
    figure, ax = _figure(height=1.2 + 0.6 * len(bars))
    shown = [(name, value if value is not None else 0.0, color) for name, value, color in bars]
    drawn = ax.barh([n for n, _, _ in shown], [v for _, v, _ in shown], color=[c for _, _, c in shown])
    ax.bar_label(drawn, labels=[f"{v:.4f}" if v is not None else "not scored" for _, v, _ in bars], padding=3)
    ax.invert_yaxis()
    ax.set_xlim(0, max([v for _, v, _ in shown] + [1e-9]) * 1.3)
    if champion is not None:
        needed = promotion.required_gain(cfg.promotion.min_delta, champion)
        bar = champion - needed if promotion.lower_is_better(metric) else champion + needed
        ax.axvline(bar, color="#C44E52", linestyle="--", label=f"needed to promote ({bar:.4f})")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_xlabel(f"{metric} on this run's rows")
    promoted = metrics.get("promotion_decision") == "promote"
    ax.set_title("promoted" if promoted else "champion kept", color="#2E7D32" if promoted else "#B26A00", loc="left")
    return figure, None


# ---------------------------------------------------------------------------------------------- page


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 24px 0 8px; }
.meta { color: #555; font-size: 14px; }
.banner { padding: 12px 16px; border-radius: 6px; margin: 16px 0; font-size: 15px; }
.promote { background: #E8F5E9; border: 1px solid #81C784; } .keep { background: #FFF3E0; border: 1px solid #FFB74D; }
table { border-collapse: collapse; font-size: 14px; } td, th { padding: 4px 12px 4px 0; text-align: left; }
td.num { font-variant-numeric: tabular-nums; text-align: right; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; }
figure.wide { grid-column: 1 / -1; }
figure { margin: 0; border: 1px solid #eee; border-radius: 6px; padding: 8px; }
figure img { max-width: 100%; height: auto; } figcaption { font-weight: 600; margin-bottom: 6px; }
.missing { color: #777; font-style: italic; }
"""


def _html(run_id: str, cfg, metrics: dict, sections) -> str:
    e = html.escape
    decision = metrics.get("promotion_decision")
    banner = ""
    if decision:
        word = "Promoted" if decision == "promote" else "Champion kept"
        banner = f'<div class="banner {e(decision)}"><b>{word}.</b> {e(str(metrics.get("promotion_reason", "")))}</div>'
    measures = [
        k[len("test_"):] for k, v in metrics.items()
        if k.startswith("test_") and isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))
    ]
    measures += [k[len("eval_"):] for k in metrics if k.startswith("eval_") and k[len("eval_"):] not in measures
                 and isinstance(metrics[k], (int, float)) and not k.endswith(("_runtime", "_per_second"))]
    cell = lambda v: f'<td class="num">{v:.4f}</td>' if isinstance(v, (int, float)) else "<td></td>"  # noqa: E731
    rows = '<tr><th></th><th>validation</th><th>test</th></tr>' + "".join(
        f"<tr><th>{e(m)}</th>{cell(metrics.get('eval_' + m))}{cell(metrics.get('test_' + m))}</tr>" for m in measures
    )
    figures = []
    for title, path, missing in sections:
        if path is None:
            figures.append(f'<figure><figcaption>{e(title)}</figcaption><p class="missing">{e(missing)}</p></figure>')
            continue
        encoded = base64.b64encode(path.read_bytes()).decode()
        wide = ' class="wide"' if path.stem == "data" else ""
        figures.append(
            f'<figure{wide}><figcaption>{e(title)}</figcaption>'
            f'<img alt="{e(title)}" data-plot="{e(path.stem)}" src="data:image/png;base64,{encoded}"></figure>'
        )
    source = redacted.redact_url(str(cfg.data.dataset or cfg.data.train_files))  # no user:password@ of a URL
    trained = ""
    if "trainable_parameters" in metrics:  # what model.train trained (job/models/loading.py parameter_counts)
        trained = (f' &middot; model.train {e(str(metrics["train_mode"]))}: {metrics["trainable_parameters"]:,} of '
                   f'{metrics["total_parameters"]:,} parameters trained ({metrics["trainable_share"]:.2%})')
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>finetune-job run {e(run_id)}</title><style>{_CSS}</style></head>
<body>
<h1>Run {e(run_id)}</h1>
<div class="meta">{e(cfg.task.name)} &middot; model {e(redacted.redact_url(cfg.model.name))} &middot; data {e(source)}{trained} &middot; written {created}</div>
{banner}
<h2>Metrics</h2>
<table>{rows}</table>
<h2>Plots</h2>
<div class="plots">
{chr(10).join(figures)}
</div>
</body></html>
"""
