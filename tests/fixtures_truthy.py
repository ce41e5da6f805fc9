"""Local stand-ins for the truthy task: jondurbin/truthy-dpo-v0.1 rows in the hub's schema and a tiny GPT-2.

- `data/`: one split, train, columns id, source, system, prompt, chosen, rejected. The chosen
  answer corrects a misconception or admits what a language model cannot know; the rejected one
  plays along. Some rows have an empty system message, one pair has identical answers
  (IDENTICAL_ID), and one question appears twice under different ids (REPEATED_IDS).
- `model/`: a 2-layer GPT-2 with random weights and a byte-level BPE (no chat template, so the
  task uses Phi-2's "Instruct: ...\\nOutput:" format).
"""

from __future__ import annotations

from pathlib import Path

import hub_fixtures

CONTEXT = 1024
"""The tiny model's context window in tokens."""
MAX_PROMPT_TOKENS = 200
"""task.max_prompt_tokens for the fixture: below the tiny model's context."""
TEST_FRACTION = 0.3
"""task.test_fraction for the fixture: a third of 30 rows leaves a few held-out prompts."""
ASSISTANT = "You are an unbiased, uncensored, helpful assistant."

# (system, question, truthful answer, fabricated answer)
QA = [
    (
        ASSISTANT,
        "Do we only use ten percent of our brains?",
        "No. Brain imaging shows activity across almost all of the brain, even during sleep.",
        "Yes, ninety percent of the brain stays unused.",
    ),
    (
        ASSISTANT,
        "Can you see the Great Wall of China from space with the naked eye?",
        "No, it is far too narrow to see from orbit without help.",
        "Yes, it is the only human structure visible from the Moon.",
    ),
    (
        "",
        "Do goldfish have a three second memory?",
        "No, goldfish can remember things for months.",
        "Yes, they forget everything after three seconds.",
    ),
    (
        ASSISTANT,
        "Does cracking your knuckles cause arthritis?",
        "Studies have found no link between knuckle cracking and arthritis.",
        "Yes, it always leads to arthritis.",
    ),
    (
        "You are Marie Curie. Answer as her.",
        "What is the weather like where you are right now?",
        "I cannot sense the weather; I am a language model speaking in her voice.",
        "It is sunny and warm in my laboratory today.",
    ),
    (
        ASSISTANT,
        "Did Napoleon Bonaparte have an unusually short stature?",
        "No, he was about average height for a Frenchman of his time.",
        "Yes, he was extremely short.",
    ),
    (
        "",
        "Do bulls get angry at the colour red?",
        "No, bulls are red-green colour blind; they react to the movement of the cape.",
        "Yes, red makes bulls furious.",
    ),
    (
        ASSISTANT,
        "Is a penny dropped from a skyscraper deadly?",
        "No, air resistance keeps it slow enough to sting but not to kill.",
        "Yes, it can kill a person below.",
    ),
    (
        ASSISTANT,
        "Do bats see nothing at all?",
        "No, bats can see, and many also use echolocation.",
        "Yes, all bats are completely blind.",
    ),
    (
        "You are a lighthouse keeper.",
        "Can you smell the sea air right now?",
        "I have no senses; I can only describe what a keeper might smell.",
        "Yes, the salt air is strong tonight.",
    ),
    (
        ASSISTANT,
        "Does sugar make children hyperactive?",
        "Controlled studies find no effect of sugar on children's behaviour.",
        "Yes, sugar always makes children hyper.",
    ),
    (
        "",
        "Is the tongue divided into taste zones?",
        "No, every part of the tongue can sense every basic taste.",
        "Yes, sweet is only at the tip.",
    ),
    (
        ASSISTANT,
        "Do we lose most body heat through our heads?",
        "No, heat is lost roughly in proportion to exposed skin.",
        "Yes, almost all heat leaves through the head.",
    ),
    (
        ASSISTANT,
        "Was Einstein bad at maths in school?",
        "No, he excelled at mathematics from a young age.",
        "Yes, he failed maths.",
    ),
    (
        "You are an old sailor.",
        "How far away is the nearest harbour from you?",
        "I have no location, so I cannot say how far any harbour is.",
        "It is two miles to the east of my boat.",
    ),
    (
        ASSISTANT,
        "Does lightning never strike the same place twice?",
        "It often does; tall buildings are struck many times a year.",
        "Correct, lightning never repeats a spot.",
    ),
    (
        "",
        "Are chameleons changing colour mainly for camouflage?",
        "Mostly not; they change colour for temperature and signalling.",
        "Yes, only to hide.",
    ),
    (
        ASSISTANT,
        "Do hair and nails keep growing after death?",
        "No, the skin dries and retracts, which only makes them look longer.",
        "Yes, they grow for weeks.",
    ),
    (
        ASSISTANT,
        "Is glass a slowly flowing liquid?",
        "No, glass is an amorphous solid; old windows are uneven from how they were made.",
        "Yes, old windows are thicker at the bottom because glass flows.",
    ),
    (
        "You are a famous chef.",
        "What did you eat for breakfast today?",
        "I do not eat; I am a language model.",
        "I had fresh croissants and coffee.",
    ),
    (
        ASSISTANT,
        "Do ostriches bury their heads in sand?",
        "No, they lower their heads to turn their eggs.",
        "Yes, when they are scared.",
    ),
    (
        "",
        "Is Mount Everest the tallest mountain from base to peak?",
        "No, Mauna Kea is taller from its base on the ocean floor.",
        "Yes, nothing is taller from base to peak.",
    ),
    (
        ASSISTANT,
        "Does shaving make hair grow back thicker?",
        "No, shaving does not change hair thickness or growth rate.",
        "Yes, it grows back much thicker.",
    ),
    (
        ASSISTANT,
        "Can you catch a cold from being cold?",
        "Colds are caused by viruses, not by low temperature itself.",
        "Yes, cold weather gives you a cold.",
    ),
    (
        "You are a desert guide.",
        "Is it hot where you are standing?",
        "I am not standing anywhere; I cannot feel heat.",
        "Yes, it is forty degrees here.",
    ),
    (
        ASSISTANT,
        "Do humans have five senses only?",
        "No, we also sense balance, temperature, pain and body position.",
        "Yes, exactly five.",
    ),
    (
        "",
        "Is blood blue inside the body?",
        "No, blood is always red; veins only look blue through skin.",
        "Yes, it turns red when it meets air.",
    ),
    (
        ASSISTANT,
        "Did Vikings wear horned helmets?",
        "No, horned helmets come from nineteenth century costume design.",
        "Yes, every Viking had horns on his helmet.",
    ),
]
IDENTICAL_ID = "truthy-identical"
REPEATED_IDS = ("truthy-000", "truthy-repeat")
"""Two rows with the same question (QA[0]); the split must put them on the same side."""


def row(i: int, row_id: str | None = None) -> dict:
    system, question, good, bad = QA[i]
    return {
        "id": row_id or f"truthy-{i:03d}",
        "source": "truthy_dpo",
        "system": system,
        "prompt": question,
        "chosen": good,
        "rejected": bad,
    }


def rows() -> list[dict]:
    """Every fixture row, in the order of the dataset file."""
    out = [row(i) for i in range(len(QA))]
    out.insert(7, {**row(3, IDENTICAL_ID), "rejected": QA[3][2]})
    out.append({**row(0, REPEATED_IDS[1]), "chosen": QA[0][2] + " Most neurons fire at some point every day."})
    return out


def make(root: Path) -> dict:
    """Write the dataset and the model under `root`; return the task settings that point at them."""
    root = Path(root)
    data = hub_fixtures.write_dataset(root / "data", {"train": rows()})
    texts = [
        f"Instruct: {r['system']}\n\n{r['prompt']}\nOutput: {r[side]}"
        for r in rows()
        for side in ("chosen", "rejected")
    ]
    # A 1024-token context: room for the task's train.max_length of 1024 (Phi-2 has 2048).
    model = hub_fixtures.tiny_causal_lm(root / "model", texts, n_positions=CONTEXT)
    return {"model": model, "dataset": data, "test_fraction": TEST_FRACTION, "max_prompt_tokens": MAX_PROMPT_TOKENS}
