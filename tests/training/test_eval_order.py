"""Evaluation and prediction run longest rows first (little padding per batch) and give predictions
back in dataset order. tests/e2e/test_run_s3.py's reproduction test checks a published run's
predictions row by row against the model run outside the job."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from job.training import trainers


def test_rows_are_evaluated_longest_first_with_ties_in_dataset_order():
    rows = Dataset.from_dict({"length": [3, 9, 1, 9, 5]})
    assert trainers._longest_first(rows) == [1, 3, 4, 0, 2]
    assert trainers._longest_first(Dataset.from_dict({"x": [1, 2]})) is None  # no length column: dataset order
    assert trainers._longest_first({"a": rows}) is None  # several evaluation sets: Trainer's own way


def test_predictions_come_back_in_dataset_order():
    order = [1, 3, 4, 0, 2]
    made = np.array([[10, 11], [30, 31], [40, 41], [0, 1], [20, 21]])  # row order[k]'s prediction at k
    restored = trainers._in_dataset_order((made, made[:, 0]), order)
    assert restored[0].tolist() == [[0, 1], [10, 11], [20, 21], [30, 31], [40, 41]]
    assert restored[1].tolist() == [0, 10, 20, 30, 40]
    assert trainers._in_dataset_order(None, order) is None
