"""Writes the shipped demo datasets, one per kind of task. Run from the repo root:

    python -m job.demo.generate

- reviews.{split}.jsonl (text-classification): short movie-review sentences built from hand-written
  phrases, labelled `positive`/`negative`, with a few negated phrases ("is not dull") so that
  word-counting alone does not solve it;
- entities.{split}.conll (token-classification): sentences naming people, places and organisations,
  one `word<TAB>tag` per line (BIO tags PER, LOC, ORG), sentences separated by blank lines;
- translation.{split}.jsonl (seq2seq): English phrases and their German word-for-word renderings,
  nested as the Hub's translation datasets are (`{"translation": {"en": ..., "de": ...}}`);
- stories.{split}.txt (causal-lm, masked-lm, permutation-lm): one short story sentence per line.

The project wrote every phrase; the output is deterministic (seeded) and the files are committed, so
the job ships data it can train on with no network, for every task (job/demo/<task>.yaml).
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
SPLITS = tuple(SIZES)


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


# Token classification: who went where, or works for whom.
PEOPLE = [["Anna"], ["Tom", "Becker"], ["Maria", "Lopez"], ["Jonas"], ["Li", "Wei"], ["Sara", "Nowak"], ["Omar"],
          ["Ines", "Costa"], ["Paul", "Martin"], ["Yuki", "Sato"], ["Elena"], ["David", "Okafor"]]
PLACES = [["Berlin"], ["Lisbon"], ["New", "York"], ["Oslo"], ["Cape", "Town"], ["Kyoto"], ["Lyon"], ["Buenos", "Aires"],
          ["Dublin"], ["San", "Diego"], ["Krakow"], ["Accra"]]
ORGS = [["Acme", "Corp"], ["the", "City", "Library"], ["Nordic", "Rail"], ["Blue", "Harbor", "Bank"], ["Unicef"],
        ["Greenfield", "University"], ["Atlas", "Media"], ["the", "Red", "Cross"]]
TEMPLATES = [
    "{PER} moved to {LOC} last year .", "{PER} works for {ORG} in {LOC} .", "yesterday {PER} met {PER} in {LOC} .",
    "{ORG} opened an office in {LOC} .", "{PER} left {ORG} for a job in {LOC} .", "we flew from {LOC} to {LOC} .",
    "{PER} said {ORG} will hire more people .", "the team from {LOC} beat {ORG} again .",
    "{PER} and {PER} visited {LOC} in May .", "a new report by {ORG} praises {PER} .",
]
ENTITIES = {"PER": PEOPLE, "LOC": PLACES, "ORG": ORGS}

# seq2seq: a small English -> German phrasebook, translated word by word (German word order kept simple).
LEXICON = {
    "the": "die", "a": "eine", "red": "rote", "small": "kleine", "old": "alte", "happy": "frohe", "green": "grüne",
    "cat": "katze", "dog": "hündin", "bird": "ente", "house": "hütte", "car": "karre", "girl": "frau",
    "sleeps": "schläft", "runs": "rennt", "sings": "singt", "waits": "wartet", "eats": "isst", "plays": "spielt",
    "here": "hier", "there": "dort", "today": "heute", "now": "jetzt", "again": "wieder",
}
ARTICLES, ADJECTIVES = ["the", "a"], ["red", "small", "old", "happy", "green"]
NOUNS, VERBS, ADVERBS = ["cat", "dog", "bird", "house", "car", "girl"], ["sleeps", "runs", "sings", "waits", "eats", "plays"], ["here", "there", "today", "now", "again"]

# Language models: little stories.
CHARACTERS = ["the little cat", "a brave girl", "the old dog", "a tiny bird", "the happy boy", "a sleepy bear"]
PLACES_STORY = ["in the garden", "by the river", "under the big tree", "at the old farm", "near the blue lake"]
ACTIONS = ["found a red ball", "sang a quiet song", "made a new friend", "lost a shiny key", "saw a bright star", "ate a sweet apple"]
FEELINGS = ["and was very happy", "and laughed all day", "and went home to sleep", "and told everyone about it", "and smiled"]

SIZES_BY_DATASET = {"entities": {"train": 300, "validation": 40, "test": 40}, "translation": {"train": 400, "validation": 40, "test": 40},
                    "stories": {"train": 400, "validation": 40, "test": 40}}


def tagged_sentences(rng: random.Random):
    """(words, tags) pairs, BIO-tagged, no sentence twice."""
    seen = set()
    while True:
        words, tags = [], []
        for piece in rng.choice(TEMPLATES).split():
            kind = piece.strip("{}") if piece.startswith("{") else None
            if kind is None:
                words.append(piece)
                tags.append("O")
                continue
            name = rng.choice(ENTITIES[kind])
            words += name
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        if tuple(words) not in seen:
            seen.add(tuple(words))
            yield words, tags


def translations(rng: random.Random):
    seen = set()
    while True:
        english = [rng.choice(ARTICLES), rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(VERBS)]
        if rng.random() < 0.6:
            english.append(rng.choice(ADVERBS))
        text = " ".join(english)
        if text not in seen:
            seen.add(text)
            yield {"translation": {"en": text, "de": " ".join(LEXICON[w] for w in english)}}


def stories(rng: random.Random):
    seen = set()
    while True:
        text = f"{rng.choice(CHARACTERS)} {rng.choice(PLACES_STORY)} {rng.choice(ACTIONS)} {rng.choice(FEELINGS)} ."
        if rng.random() < 0.3:
            text = f"one day , {text}"
        if text not in seen:
            seen.add(text)
            yield text


def main() -> None:
    here = Path(__file__).parent
    rows = sentences(random.Random(17))
    for split, size in SIZES.items():
        with open(here / f"reviews.{split}.jsonl", "w", encoding="utf-8") as out:
            for _ in range(size):
                out.write(json.dumps(next(rows)) + "\n")
    tagged, pairs, lines = tagged_sentences(random.Random(18)), translations(random.Random(19)), stories(random.Random(20))
    for split in SPLITS:
        with open(here / f"entities.{split}.conll", "w", encoding="utf-8") as out:
            for _ in range(SIZES_BY_DATASET["entities"][split]):
                words, tags = next(tagged)
                out.write("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n")
        with open(here / f"translation.{split}.jsonl", "w", encoding="utf-8") as out:
            for _ in range(SIZES_BY_DATASET["translation"][split]):
                out.write(json.dumps(next(pairs), ensure_ascii=False) + "\n")
        with open(here / f"stories.{split}.txt", "w", encoding="utf-8") as out:
            for _ in range(SIZES_BY_DATASET["stories"][split]):
                out.write(next(lines) + "\n")


if __name__ == "__main__":
    main()
