"""Local stand-ins for the hh task: Anthropic/hh-rlhf dialogues in the hub's schema and a tiny GPT-2.

- `data/`: splits train and test, columns chosen and rejected, each a whole dialogue
  "\\n\\nHuman: ...\\n\\nAssistant: ...". Most pairs are single-turn; the train split also holds
  the pairs the task must skip (TRAIN_SKIPS: multi-turn, prompts that differ, an empty response,
  identical responses), the test split a multi-turn pair and one question far longer than the
  others (LONG_QUESTION) for the prompt-length limit (MAX_PROMPT_TOKENS).
- `model/`: a 2-layer GPT-2 with random weights and a byte-level BPE trained on the dialogues.

The settings make the preferred-FT build a few optimizer steps, so it runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import hub_fixtures

MAX_PROMPT_TOKENS = 120
"""task.max_prompt_tokens for the fixture: above every short question, below LONG_QUESTION."""

# (question, the better answer, a worse answer)
QA = [
    (
        "How do I boil an egg?",
        "Put the egg in boiling water for about nine minutes, then cool it in cold water.",
        "Eggs are round.",
    ),
    (
        "What is a good way to fall asleep faster?",
        "Keep a regular bedtime, dim the lights and put your phone away an hour before bed.",
        "Just stay awake.",
    ),
    ("Can you recommend a book about space?", "Cosmos by Carl Sagan is a friendly introduction to astronomy.", "No."),
    (
        "How can I save money on groceries?",
        "Plan meals for the week, make a list and buy store brands.",
        "Buy whatever looks nice.",
    ),
    (
        "What should I pack for a day hike?",
        "Water, snacks, a map, sunscreen, a rain layer and a charged phone.",
        "Nothing, hiking is easy.",
    ),
    (
        "How do I get a stain out of a shirt?",
        "Rinse it with cold water, rub in a little dish soap and wash it soon.",
        "Throw the shirt away.",
    ),
    (
        "Why is the sky blue?",
        "Air scatters blue sunlight more than red light, so blue reaches your eyes from all directions.",
        "Because it likes blue.",
    ),
    (
        "How often should I water a cactus?",
        "About every two to three weeks, letting the soil dry out completely.",
        "Every hour.",
    ),
    ("What is a healthy breakfast?", "Oatmeal with fruit and nuts, or eggs with whole grain toast.", "Cake and soda."),
    (
        "How do I start learning to code?",
        "Pick one language such as Python and build small projects every day.",
        "Read a dictionary.",
    ),
    (
        "How can I calm down before an exam?",
        "Breathe slowly, review your notes briefly and remind yourself you prepared.",
        "Panic more.",
    ),
    (
        "What is a simple dinner I can cook?",
        "Pasta with garlic, olive oil, tomatoes and basil takes twenty minutes.",
        "Order something.",
    ),
    (
        "How do I make my plants grow better?",
        "Give them enough light, water when the soil is dry and feed them in spring.",
        "Talk loudly at them.",
    ),
    ("What is the capital of France?", "The capital of France is Paris.", "It is London."),
    (
        "How do I write a thank you note?",
        "Name the gift or favour, say how it helped you and end warmly.",
        "Write thanks.",
    ),
    (
        "Is it safe to swim after eating?",
        "Yes, for most people it is safe; you may just feel a bit slow.",
        "Never swim again.",
    ),
    (
        "How can I improve my handwriting?",
        "Write slowly, hold the pen loosely and practise letters every day.",
        "Type instead.",
    ),
    (
        "What can I do on a rainy weekend?",
        "Visit a museum, bake bread, watch a film series or start a puzzle.",
        "Sleep all day.",
    ),
    (
        "How do I clean a cast iron pan?",
        "Scrub it with hot water, dry it on the stove and rub in a thin layer of oil.",
        "Put it in the dishwasher.",
    ),
    (
        "What is a polite way to decline an invitation?",
        "Thank them, say you cannot make it, and suggest another time.",
        "Ignore it.",
    ),
    (
        "How do I keep a cut flower fresh?",
        "Trim the stem at an angle and change the water every two days.",
        "Put it in the sun.",
    ),
    ("Why do cats purr?", "Cats purr when content and sometimes to soothe themselves when stressed.", "To scare dogs."),
]
TRAIN, TEST = range(0, 14), range(14, 22)
"""QA indices of the single-turn pairs of each split."""
LONG_QUESTION = (
    "I am planning a long trip across several countries next summer and I would like some help. " * 12
    + "What should I plan first?"
)
TRAIN_SKIPS = {"multi_turn": 2, "prompt_mismatch": 1, "empty_response": 1, "identical_pairs": 1}
"""How many train rows the task must skip for each reason."""


def dialogue(*turns: str) -> str:
    """The hh-rlhf text of alternating Human / Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def pair(i: int) -> dict:
    question, good, bad = QA[i]
    return {"chosen": dialogue(question, good), "rejected": dialogue(question, bad)}


def multi_turn(i: int) -> dict:
    question, good, bad = QA[i]
    return {
        "chosen": dialogue(question, good, "Thanks, anything else?", "Enjoy it."),
        "rejected": dialogue(question, bad, "Thanks, anything else?", "No."),
    }


def rows_train() -> list[dict]:
    """The single-turn train pairs with the rows to skip placed between them (TRAIN_SKIPS)."""
    rows = [pair(i) for i in TRAIN]
    rows.insert(2, multi_turn(0))
    rows.insert(5, multi_turn(1))
    rows.insert(7, {"chosen": dialogue(QA[2][0], QA[2][1]), "rejected": dialogue(QA[3][0], QA[3][2])})
    rows.insert(9, {"chosen": dialogue(QA[4][0], QA[4][1]), "rejected": dialogue(QA[4][0], "")})
    rows.insert(11, {"chosen": dialogue(QA[5][0], QA[5][1]), "rejected": dialogue(QA[5][0], QA[5][1])})
    return rows


def rows_test() -> list[dict]:
    """The single-turn test pairs, with a multi-turn pair second and the long question fourth."""
    rows = [pair(i) for i in TEST]
    rows.insert(1, multi_turn(TEST[0]))
    rows.insert(
        3,
        {
            "chosen": dialogue(LONG_QUESTION, "Start with the route and the visas."),
            "rejected": dialogue(LONG_QUESTION, "Go."),
        },
    )
    return rows


def make(root: Path) -> dict:
    """Write the dataset and the model under `root`; return the task settings that point at them."""
    root = Path(root)
    data = hub_fixtures.write_dataset(root / "data", {"train": rows_train(), "test": rows_test()})
    texts = [r[side] for r in rows_train() + rows_test() for side in ("chosen", "rejected")]
    model = hub_fixtures.tiny_causal_lm(root / "model", texts)
    return {
        "model": model,
        "dataset": data,
        "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "sft_steps": 3,
        "sft_batch_size": 4,
        "sft_warmup_steps": 0,
        "sft_lr": 1e-3,
    }
