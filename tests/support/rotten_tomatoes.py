"""Write the rotten_tomatoes rebuild (../shared/data/rt-polaritydata, HF's split rule: 8530/1066/1066 rows)
as the jsonl files job/configs/text-classification-minilm.yaml reads.

    python tests/support/rotten_tomatoes.py                    # /tmp/rotten_tomatoes/{train,validation,test}.jsonl
    python tests/support/rotten_tomatoes.py FOLDER

Rows are {"text": ..., "label": 0 or 1} (0 negative, 1 positive), as tests/conftest.py's
rotten_tomatoes_splits() builds them. The files are derived data: they stay outside the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest
from conftest import rotten_tomatoes_splits, write_jsonl  # noqa: E402

FOLDER = Path("/tmp/rotten_tomatoes")


def write(folder: Path = FOLDER, sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """FOLDER/<split>.jsonl for each split; `sizes` keeps that many rows of a split, half of each label
    (a split lists its positive rows first, so a subset takes rows from both ends)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in rotten_tomatoes_splits().items():
        if (sizes or {}).get(split):
            n = sizes[split]
            rows = rows[: n // 2] + rows[len(rows) - (n - n // 2):]
        paths[split] = write_jsonl(folder / f"{split}.jsonl", rows)
    return paths


if __name__ == "__main__":
    for split, path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER).items():
        print(f"{split}: {sum(1 for _ in path.open())} rows -> {path}")
