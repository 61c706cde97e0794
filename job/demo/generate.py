"""Writes the shipped demo dataset (reviews.{train,validation,test}.jsonl). Run from the repo root:

    python -m job.demo.generate

Short movie-review sentences built from hand-written phrases, labelled `positive`/`negative`, with a
few negated phrases ("is not dull") so that word-counting alone does not solve it. The project wrote
every phrase; the output is deterministic (seeded) and the files are committed, so the job ships data
it can train on with no network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = [
    "the film", "this movie", "the plot", "the acting", "the soundtrack", "the script", "the cast",
    "the ending", "the dialogue", "the pacing", "the photography", "the sequel", "the lead performance",
    "the story", "the humour", "the direction",
]
GOOD = [
    "is wonderful", "was a delight", "is warm and funny", "left me smiling", "is beautifully made",
    "works brilliantly", "is a triumph", "feels fresh and clever", "is genuinely moving", "kept me hooked",
    "is superb", "is charming", "is gripping from start to finish", "is a joy to watch", "is smart and touching",
]
BAD = [
    "is dull", "was a mess", "is painfully slow", "left me bored", "is poorly made", "falls flat",
    "is a disaster", "feels stale and lazy", "is completely forgettable", "put me to sleep", "is awful",
    "is tedious", "is clumsy and loud", "is a waste of time", "is confused and shallow",
]
NEGATED_BAD = ["is not dull", "is never boring", "is not a waste of time", "is anything but tedious"]
NEGATED_GOOD = ["is not wonderful", "is never funny", "is not clever at all", "is anything but charming"]
OPENERS = ["", "", "", "honestly , ", "overall , ", "i think ", "frankly , ", "sadly , ", "happily , "]
ENDINGS = [" .", " .", " !", " , really .", " , if you ask me ."]

SIZES = {"train": 480, "validation": 60, "test": 60}


def sentences(rng: random.Random):
    seen = set()
    while True:
        label = rng.choice(["positive", "negative"])
        negated = rng.random() < 0.15
        phrase = rng.choice((NEGATED_BAD if negated else GOOD) if label == "positive" else (NEGATED_GOOD if negated else BAD))
        text = f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {phrase}{rng.choice(ENDINGS)}"
        if text not in seen:
            seen.add(text)
            yield {"text": text, "label": label}


def main() -> None:
    rng = random.Random(17)
    rows = sentences(rng)
    here = Path(__file__).parent
    for split, size in SIZES.items():
        with open(here / f"reviews.{split}.jsonl", "w", encoding="utf-8") as out:
            for _ in range(size):
                out.write(json.dumps(next(rows)) + "\n")


if __name__ == "__main__":
    main()
