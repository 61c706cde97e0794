"""The promotion gate: does this run beat the champion, both scored on this run's evaluation data?

    promotion:
      mode: auto         # auto: promote when the run beats the champion; never; always
      metric: test_f1    # a test_* or eval_* metric; loss, perplexity, mse, rmse and mae are better when lower
      min_delta: 0.01    # least improvement that promotes: absolute, or relative to the champion ("1%")

The champion's metrics.json was measured on its own test data, and the data changes every night. So
its model is loaded here and evaluated on exactly the rows the candidate was (test rows for test_*,
validation rows for eval_*), with its own tokenizer (a builtin model's vocabulary depends on the data
it was trained on): an easier test set lifts both scores and cannot fake an improvement. A candidate
at least `min_delta` better is promoted; with the default 0, a tie promotes the fresher model. A
champion with other labels is not comparable and stays (promote by hand); a champion whose run lost
its `_SUCCESS` is replaced.

Champions are per task: a run never scores a champion of another task (a causal-lm perplexity and a
masked-lm pseudo-perplexity measure different things) or of another kind of problem (regression
against single-label), nor one with another label set. Such a champion is kept, with that reason in
metrics.json (promote by hand, or give unrelated runs their own `output.uri`); `finetune-job check`
says so before any training.

The decision, both scores and the reason go into metrics.json (`promotion_*`) and the log before the
run is published; the pointer moves only after `_SUCCESS` (job/retraining/champion.py). If another run became
champion in between, the gate scores that one too and decides again. `settle` then makes metrics.json
say what happened, and repairs a promotion a failure left undone (the rule is in its docstring).

The champion's model is a file someone else wrote into the bucket: it is loaded without
`trust_remote_code`, which only ever applies to the model the config names.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from job import models, storage, training
from job.errors import ModelError, first_line
from job.retraining import champion

log = logging.getLogger(__name__)


class Incomparable(Exception):
    """The champion cannot be scored on this run's data (other labels, or a model that will not load)."""


@dataclass
class Decision:
    promote: bool
    reason: str
    metric: str
    candidate: float | None
    champion: float | None = None
    champion_run: str | None = None
    champion_generation: int | None = None

    @classmethod
    def from_metrics(cls, metrics: dict) -> "Decision | None":
        """The decision a published metrics.json records (None for a run that made none)."""
        if "promotion_decision" not in metrics:
            return None
        return cls(
            metrics["promotion_decision"] == "promote",
            metrics.get("promotion_reason", ""),
            metrics.get("promotion_metric"),
            metrics.get("promotion_candidate"),
            metrics.get("promotion_champion"),
            metrics.get("promotion_champion_run"),
            metrics.get("promotion_champion_generation"),
        )

    def metrics(self) -> dict:
        """The flat `promotion_*` entries of metrics.json."""
        return {
            "promotion_decision": "promote" if self.promote else "keep",
            "promotion_reason": self.reason,
            "promotion_metric": self.metric,
            "promotion_candidate": self.candidate,
            "promotion_champion": self.champion,
            "promotion_champion_run": self.champion_run,
            "promotion_champion_generation": self.champion_generation,
        }


def lower_is_better(metric: str) -> bool:
    """TrainingArguments.greater_is_better's rule (a loss), plus perplexity and regression's errors."""
    return metric.endswith(("loss", "perplexity", "mse", "rmse", "mae"))


def required_gain(min_delta: float | str, champion_score: float) -> float:
    """min_delta as an absolute gain: 0.01 as is, "1%" of the champion's score."""
    if isinstance(min_delta, str):
        return float(min_delta.strip().rstrip("%")) / 100 * abs(champion_score)
    return float(min_delta)


def judge(mode: str, metric: str, min_delta, candidate: float | None, champion_score: float | None, champion_run: str | None) -> tuple[bool, str]:
    """The rule, without any I/O: (promote?, why)."""
    if mode == "never":
        return False, "promotion.mode is never"
    if mode == "always":
        return True, "promotion.mode is always"
    if candidate is None:
        return False, f"this run has no {metric} (are the evaluated rows labelled?)"
    if champion_run is None:
        return True, "there is no champion yet"
    gain = (champion_score - candidate) if lower_is_better(metric) else (candidate - champion_score)
    needed = required_gain(min_delta, champion_score)
    comparison = f"{metric} {candidate:.4f} against {champion_score:.4f} for champion {champion_run} on the same rows: {gain:+.4f}"
    if gain >= needed - 1e-12:  # 0.9 - 0.8 must count as a gain of 0.1
        return True, f"{comparison}, at least the {needed:.4f} required"
    return False, f"{comparison}, less than the {needed:.4f} required"


class Gate:
    """Scores champions on this run's data (each run at most once) and decides."""

    def __init__(self, cfg, store, run_id: str, score: Callable[[str], float | None], workers: int = 1):
        self.cfg = cfg
        self.settings = cfg.promotion
        self.store = store
        self.run_id = run_id
        self.score = score  # run id -> that run's model's `promotion.metric` on this run's rows
        self.scores: dict[str, tuple[float | None, str | None]] = {}
        self.workers = workers  # scoring needs them all; set to 1 once the others have finished
        self.can_score = True

    def workers_finished(self) -> None:
        """Only the first worker goes on (to publish): a multi-worker run can score no other champion."""
        self.can_score = self.workers == 1

    def decide(self, metrics: dict, pointer: dict | None | str = "read") -> Decision:
        """Decide against `pointer` (the current champion, read from storage by default)."""
        s = self.settings
        if pointer == "read":
            pointer = _from_first_worker(lambda: champion.read(self.store)[0])
        value = metrics.get(s.metric)
        decision = Decision(False, "", s.metric, float(value) if isinstance(value, (int, float)) else None)
        if pointer is not None and pointer["run_id"] != self.run_id:
            decision.champion_run, decision.champion_generation = pointer["run_id"], pointer["generation"]
            if decision.candidate is not None:
                decision.champion, problem = self._champion_score(pointer["run_id"])
                if problem is not None:
                    gone = problem.startswith("gone")
                    decision.promote = s.mode == "always" or (s.mode == "auto" and gone)
                    action = "replace it" if decision.promote else "keep it (promote by hand to override)"
                    decision.reason = f"champion {pointer['run_id']} cannot be scored on this run's rows ({problem}); {action}"
                    return self._logged(decision)
        decision.promote, decision.reason = judge(
            s.mode, s.metric, s.min_delta, decision.candidate, decision.champion, decision.champion_run
        )
        return self._logged(decision)

    def promote(self, decision: Decision, metrics: dict) -> dict | None:
        """After `_SUCCESS`: move the pointer to this run if the gate said so, by compare-and-swap;
        if another run became champion since the decision, score it and decide again."""
        if not decision.promote:
            return None

        def choose(pointer):
            nonlocal decision
            seen = pointer["generation"] if pointer else None
            if seen != decision.champion_generation or (pointer and pointer["run_id"] != decision.champion_run):
                decision = self.decide(metrics, pointer)
            if not decision.promote:
                return None
            return {"run_id": self.run_id, "metric": decision.metric, "value": decision.candidate, "previous": seen, "reason": decision.reason}

        written = champion.move(self.store, choose, by="run")
        self.final = decision  # what `settle` records in metrics.json
        return written

    def _champion_score(self, run_id: str) -> tuple[float | None, str | None]:
        if run_id not in self.scores:
            if storage.read_manifest(self.store, run_id) is None:
                self.scores[run_id] = None, "gone: its run has no _SUCCESS"
            elif (other := other_kind(self.cfg, self.store, run_id)) is not None:
                self.scores[run_id] = None, other
            elif not self.can_score:
                return None, "it became champion after this run's workers had finished, and scoring needs them all"
            else:
                try:
                    self.scores[run_id] = self.score(run_id), None
                except Incomparable as exc:
                    self.scores[run_id] = None, str(exc)
        return self.scores[run_id]

    def _logged(self, decision: Decision) -> Decision:
        log.info("promotion: %s: %s", "promote" if decision.promote else "keep the champion", decision.reason)
        return decision


# ---------------------------------------------------------------------------------------------- settle


def settle(store, run_id: str, gate: Gate | None = None) -> dict:
    """After `_SUCCESS`: carry out the promotion the run's metrics.json records, unless it already
    happened, and make metrics.json say what finally happened. Returns the (amended) metrics.

    A run promoted when it is in the promotions log after the champion it was judged against (or the
    pointer names it). Otherwise, with a `gate` (the run's first attempt) the gate moves the pointer,
    scoring again any champion promoted since its decision. Without one (a rerun of a finished run id,
    repairing what a failure after `_SUCCESS` left undone):
    - if the champion is still the one the decision was judged against, the compare-and-swap is
      finished now;
    - if another run became champion since, the decision is superseded: this run was never compared
      with that champion, and a finished run does not load data and models again to do it. It stays
      unpromoted (`finetune-job promote` overrides).
    metrics.json and its `_SUCCESS` entry are rewritten when the outcome differs from what they say, so
    metrics.json and the pointer never disagree."""
    metrics = json.loads(store.get_bytes(storage.join(run_id, "metrics.json")) or b"{}")
    decision = Decision.from_metrics(metrics)
    if decision is None or not decision.promote or _promoted(store, run_id, decision.champion_generation):
        return metrics
    if gate is not None:
        gate.promote(decision, metrics)
        final = gate.final
    else:
        final = _finish_promotion(store, run_id, decision)
    if final.metrics() == decision.metrics():
        return metrics
    metrics.update(final.metrics())
    storage.replace_file(store, run_id, "metrics.json", (json.dumps(metrics, indent=2)).encode())
    log.info("promotion: metrics.json of run %s now says %s: %s", run_id, metrics["promotion_decision"], final.reason)
    return metrics


def _promoted(store, run_id: str, judged_generation: int | None) -> bool:
    """Did `run_id` become champion after generation `judged_generation`? The pointer names it, or its
    record is in the log (each generation's record is written once, the newest possibly not yet: the
    pointer itself stands for it, and its record is written now)."""
    pointer, _ = champion.read(store)
    if pointer is None:
        return False
    if pointer["run_id"] == run_id:
        champion.write_audit(store, pointer)
        return True
    for generation in range((judged_generation or 0) + 1, pointer["generation"]):
        record = champion.record(store, generation)
        if record is not None and record["run_id"] == run_id:
            return True
    return False


def _finish_promotion(store, run_id: str, decision: Decision) -> Decision:
    """A rerun's promotion: against the champion the decision was judged against, or superseded."""
    newer = None

    def choose(pointer):
        nonlocal newer
        generation = pointer["generation"] if pointer else None
        if generation != decision.champion_generation:
            newer = pointer
            return None
        reason = f"{decision.reason} (written by a rerun)"
        return {"run_id": run_id, "metric": decision.metric, "value": decision.candidate, "previous": generation, "reason": reason}

    champion.move(store, choose, by="run")
    if newer is None:
        return decision
    judged = f"champion {decision.champion_run}" if decision.champion_run else "no champion"
    reason = (
        f"superseded: promoted against {judged}, but run {newer['run_id']} became champion (generation "
        f"{newer['generation']}) before this run's promotion was written, and this run was not compared "
        "with it (finetune-job promote overrides)"
    )
    log.info("promotion: %s", reason)
    return dataclasses.replace(decision, promote=False, reason=reason)


# ---------------------------------------------------------------------------------------------- scoring


def other_kind(cfg, store, run_id: str) -> str | None:
    """Why the model of run `run_id` is not a model of this run's kind (task, problem type), or None.
    Read from the small file a published model carries (models.META_FILE), before any download; a
    model without one is left to the scoring (it fails there if it does not fit)."""
    data = store.get_bytes(storage.join(run_id, "model", models.META_FILE))
    if data is None:
        return None
    theirs, ours = json.loads(data), models.meta(cfg)
    if theirs.get("task") != ours["task"]:
        return f"it was trained for {theirs.get('task') or 'no task finetune-job knows'}, this run for {ours['task']}"
    problem = theirs.get("task_settings", {}).get("problem_type"), ours["task_settings"].get("problem_type")
    if problem[0] != problem[1]:
        return f"its problem type is {problem[0]}, this run's {problem[1]}"
    return None


def evaluator(cfg, store, task, spec, raw, args) -> Callable[[str], float | None]:
    """score(run_id): that run's model evaluated on this run's rows (test for test_*, validation for
    eval_*) by a Trainer on the run's own arguments, so with the task's hooks (generation, shrunk
    language-model logits), batch size, device and precision. In a multi-worker run every worker
    must call it together, as the evaluation is distributed."""
    metric = cfg.promotion.metric
    split, prefix = ("test", "test") if metric.startswith("test_") else ("validation", "eval")

    def score(run_id: str) -> float | None:
        with tempfile.TemporaryDirectory(prefix="finetune-champion-") as tmp:
            store.download(storage.join(run_id, "model"), Path(tmp))
            tokenizer, model = _load(Path(tmp), cfg, task, spec, run_id)
            features, collator = training.prepare(cfg, task, spec, tokenizer, {split: raw[split]})
            scorer = training.evaluator(cfg, args, model, tokenizer, collator, lambda p: task.compute_metrics(p, spec), features[split])
            value = scorer.predict(features[split], metric_key_prefix=prefix).metrics.get(metric)
        if not isinstance(value, (int, float)):
            raise Incomparable(f"its evaluation gives no {metric}")
        log.info("promotion: champion %s scores %s %s on this run's %s rows", run_id, metric, value, split)
        return value

    return score


def _load(model_dir: Path, cfg, task, spec, run_id: str):
    try:
        # Never trust_remote_code here: that setting is for the model the config names, not for whatever
        # model another run (or anyone with write access to the bucket) left behind the pointer.
        tokenizer, model = models.load_published(model_dir, task, model_dir / "base", trust_remote_code=False)
    except (OSError, ValueError, KeyError, ModelError) as exc:
        raise Incomparable(f"its model does not load: {first_line(exc, 200)}") from exc
    ours = task.model_kwargs(spec).get("id2label")
    if ours is not None:
        theirs = {int(k): v for k, v in (model.config.id2label or {}).items()}
        if theirs != {int(k): v for k, v in ours.items()}:
            raise Incomparable(f"its labels are {list(theirs.values())}, this run's {list(ours.values())}")
    return tokenizer, model


def _from_first_worker(read: Callable):
    """`read()` on the first worker, its result handed to every worker (they must score the same run)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return read()
    box = [read() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
