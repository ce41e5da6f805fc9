"""Local stand-ins for the tldr task: Reddit TL;DR data in the CarperAI schemas and a tiny GPT-2.

- `sft/`: CarperAI/openai_summarize_tldr (splits train, valid, test; columns prompt, label). The
  prompt is "SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:", the label the reference summary.
- `comparisons/`: CarperAI/openai_summarize_comparisons (splits train, test, valid1, valid2;
  columns prompt, chosen, rejected). The prompt stops after the post; both summaries start with
  "TL;DR: ".
- `model/`: a 2-layer GPT-2 with random weights and a byte-level BPE trained on the text above.

The posts are short and written for these tests; one test post (LONG_POST_TITLE) is far longer
than the others so the task's prompt-length limit (MAX_PROMPT_TOKENS) has something to cut.
"""

from __future__ import annotations

from pathlib import Path

import hub_fixtures

CONTEXT = 1024
"""The tiny model's context window in tokens."""
MAX_PROMPT_TOKENS = 200
"""task.max_prompt_tokens for the fixture: above every short post, below the long one."""
LONG_POST_TITLE = "Long story about my first year running a tiny bakery, need perspective"

# (subreddit, title, post, reference summary, a worse summary)
POSTS = [
    (
        "relationships",
        "My (24F) boyfriend (26M) keeps forgetting plans we make together",
        "We agree on a date night and he books something else for the same evening. It happened three times this "
        "month. He apologises every time but nothing changes and I feel like I am not a priority.",
        "boyfriend keeps double booking our date nights, apologises but never changes, I feel unimportant.",
        "my boyfriend is bad.",
    ),
    (
        "personalfinance",
        "Should I pay off my car loan early or build an emergency fund first?",
        "I have 4,000 left on a car loan at 3% interest and about 500 in savings. My job is stable but my rent "
        "went up last month. I can put 600 a month toward one goal.",
        "small car loan at 3% and almost no savings: emergency fund first or pay off the loan?",
        "car loan question, money is tight, rent, savings, job, interest and other things.",
    ),
    (
        "AskReddit",
        "What is a small habit that improved your life a lot?",
        "For me it was putting my phone in another room at night. I fall asleep faster and I stopped scrolling "
        "first thing in the morning. Curious what worked for other people.",
        "phone out of the bedroom helped my sleep; what small habit changed your life?",
        "phones.",
    ),
    (
        "dogs",
        "My rescue dog is scared of men wearing hats",
        "We adopted a three year old mixed breed two months ago. She is sweet with everyone except men in hats or "
        "hoods; she barks and hides behind the couch. How do we help her get used to it?",
        "new rescue dog panics around men in hats or hoods, looking for ways to help her adjust.",
        "dog barks sometimes at the couch.",
    ),
    (
        "cooking",
        "Why does my homemade bread always come out dense?",
        "I follow the recipe exactly, let it rise for an hour, and bake at the right temperature. The loaf still "
        "comes out heavy and barely rises in the oven. My kitchen is quite cold in winter.",
        "bread stays dense even following the recipe; my kitchen is cold, is the rise too short?",
        "I bake bread and follow recipes and my kitchen exists.",
    ),
    (
        "jobs",
        "Got two offers, one pays more but the other has remote work",
        "Offer A pays 10% more but needs me in the office five days a week with a long commute. Offer B is fully "
        "remote with a smaller salary. I have a young kid at home.",
        "choosing between a higher paying office job with a long commute and a remote job with less pay.",
        "two jobs, one is A and one is B, kid.",
    ),
    (
        "legaladvice",
        "Landlord kept my whole deposit for normal wear",
        "I moved out after four years. The landlord says faded paint and worn carpet mean he keeps the entire "
        "deposit. I have photos from move in and move out. The lease says nothing about paint.",
        "landlord kept my full deposit for paint and carpet wear after four years; I have photos.",
        "deposit gone, carpet, landlord, photos, lease, four years, paint.",
    ),
    (
        "fitness",
        "Not losing weight despite running four times a week",
        "I started running in January, four times a week for thirty minutes. My weight has not changed in two "
        "months. I eat more on running days because I am always hungry.",
        "running four times a week for two months without losing weight, but I eat more on run days.",
        "running is not working.",
    ),
    (
        "techsupport",
        "Laptop fan runs at full speed even when idle",
        "My two year old laptop started sounding like a jet engine. Task manager shows almost no CPU use. I "
        "cleaned the vents with compressed air but it did not help.",
        "laptop fan stays loud at idle with low CPU use, cleaning the vents did not fix it.",
        "loud laptop jet engine task manager.",
    ),
    (
        "parenting",
        "Toddler refuses to eat anything but pasta",
        "Our two year old eats plain pasta for lunch and dinner and pushes everything else away. The doctor says "
        "he is healthy but we worry. We tried hiding vegetables and he notices every time.",
        "two year old only eats plain pasta, healthy per the doctor, hidden vegetables do not work.",
        "kid likes pasta a lot and that is the post.",
    ),
    (
        "travel",
        "Is it worth visiting Lisbon in February?",
        "I can get cheap flights for a week in February. I like walking around cities and trying food, I do not "
        "care much about beaches. Will the weather ruin it?",
        "cheap flights to Lisbon in February, I want to walk and eat, will the weather be a problem?",
        "Lisbon.",
    ),
    (
        "gardening",
        "Tomato plants have yellow leaves at the bottom",
        "The lower leaves on my tomato plants turned yellow and are falling off. The top looks fine and there are "
        "green fruits. I water every morning.",
        "lower tomato leaves turning yellow and dropping while the top and fruit look fine; I water daily.",
        "plants have leaves that are colours.",
    ),
    (
        "relationship_advice",
        "Best friend did not invite me to her wedding",
        "We have been friends since primary school. I found out about the wedding on social media. She says it "
        "was small, but people she met last year were there. I do not know whether to say anything.",
        "childhood best friend left me out of her small wedding but invited newer friends; should I say something?",
        "wedding happened.",
    ),
    (
        "buildapc",
        "First build will not turn on at all",
        "No lights, no fans, nothing when I press the power button. The power supply switch is on and the cable "
        "is plugged in. I checked the front panel connectors twice.",
        "first PC build is completely dead on power button, PSU on and front panel checked.",
        "computer.",
    ),
    (
        "cats",
        "Cat started peeing outside the litter box",
        "Our eight year old cat suddenly started peeing on the bath mat. Nothing changed at home and the litter "
        "is the same brand. She otherwise eats and plays normally.",
        "older cat suddenly pees on the bath mat with no changes at home; otherwise normal.",
        "cat bath mat litter brand.",
    ),
    (
        "college",
        "Failed my first exam and feel like dropping out",
        "I studied for two weeks and still got 38 out of 100 in calculus. Everyone else seemed fine. I am the "
        "first in my family at university and I feel like I do not belong here.",
        "failed my first calculus exam despite studying and now doubt I belong at university.",
        "exam bad, calculus, family, university, I studied.",
    ),
    (
        "running",
        "Knee pain after increasing mileage",
        "I went from 20 to 35 kilometres a week over a month to train for a half marathon. Now the outside of my "
        "right knee hurts after about five kilometres.",
        "raised weekly distance quickly for a half marathon and now the outside of my knee hurts after 5 km.",
        "knee.",
    ),
    (
        "homeimprovement",
        "Bathroom fan does not seem to pull any air",
        "After a shower the mirror stays fogged for an hour. The fan makes noise but a tissue held up to it does "
        "not move. The house is about thirty years old.",
        "bathroom fan runs but pulls no air, mirror stays fogged; thirty year old house.",
        "fan noise and tissue.",
    ),
    (
        "books",
        "Looking for novels like The Martian",
        "I loved the problem solving and humour in The Martian. I do not mind science heavy books as long as "
        "the main character is fun to follow.",
        "want science heavy, funny problem-solving novels like The Martian.",
        "books please.",
    ),
    (
        "careerguidance",
        "Is it too late to switch to nursing at 35?",
        "I have worked in retail management for twelve years and want to do something that helps people. A "
        "nursing degree takes three years where I live and I have savings for about half of that.",
        "35 and thinking of leaving retail management for a three year nursing degree, savings cover half.",
        "career change maybe.",
    ),
    (
        "Frugal",
        "Cheapest way to eat healthy while working long shifts",
        "I work twelve hour shifts three days a week and end up buying fast food. I want to cook more but I am "
        "exhausted after work. Budget is about 50 a week.",
        "long shifts push me to fast food; want cheap healthy meals for about 50 a week.",
        "food is expensive.",
    ),
    (
        "pets",
        "Neighbour feeds my dog through the fence",
        "My neighbour keeps throwing bread and scraps over the fence. My dog has a sensitive stomach and has "
        "been sick twice. I asked politely once and it did not stop.",
        "neighbour keeps feeding my sensitive dog scraps over the fence despite one polite request.",
        "neighbour and fence and bread.",
    ),
    (
        "Bakery",
        LONG_POST_TITLE,
        "I opened a small bakery last spring after saving for six years. "
        + "Every morning starts at four with dough, then the ovens, then the first customers at seven. " * 9
        + "Sales are growing slowly but the rent went up twice and my only employee wants to leave. "
        "I love the work but I am tired all the time and I do not know whether to keep going.",
        "first year running my bakery: slow growth, rent up twice, my only employee leaving, should I continue?",
        "bakery, ovens, dough, customers, rent.",
    ),
    (
        "learnprogramming",
        "How do I get better at reading other people's code?",
        "I can write small programs myself but when I open a real project I get lost in the files. Is there a "
        "method to understand a large codebase without reading everything?",
        "comfortable writing small programs but lost in large codebases; how do I learn to read them?",
        "code is hard.",
    ),
]
LONG_INDEX = next(i for i, p in enumerate(POSTS) if p[1] == LONG_POST_TITLE)
TRAIN, VALID, TEST = range(0, 12), range(18, 24), range(12, 24)
"""Post indices of the SFT splits; the comparison splits use the same ones (valid1 / valid2 halves of VALID)."""


def post_text(i: int) -> str:
    subreddit, title, post, _, _ = POSTS[i]
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}"


def sft_row(i: int) -> dict:
    return {"prompt": post_text(i) + "\nTL;DR:", "label": " " + POSTS[i][3]}


def comparison_row(i: int) -> dict:
    return {"prompt": post_text(i), "chosen": "TL;DR: " + POSTS[i][3], "rejected": "TL;DR: " + POSTS[i][4]}


def make(root: Path) -> dict:
    """Write the datasets and the model under `root`; return the task settings that point at them."""
    root = Path(root)
    sft = hub_fixtures.write_dataset(
        root / "sft",
        {
            "train": [sft_row(i) for i in TRAIN],
            "valid": [sft_row(i) for i in VALID],
            "test": [sft_row(i) for i in TEST],
        },
    )
    comparisons = hub_fixtures.write_dataset(
        root / "comparisons",
        {
            "train": [comparison_row(i) for i in TRAIN],
            "test": [comparison_row(i) for i in TEST],
            "valid1": [comparison_row(i) for i in VALID[:3]],
            "valid2": [comparison_row(i) for i in VALID[3:]],
        },
    )
    texts = [sft_row(i)["prompt"] + sft_row(i)["label"] for i in range(len(POSTS))]
    texts += [comparison_row(i)["rejected"] for i in range(len(POSTS))]
    # A 1024-token context, as GPT-2's: room for the task's train.max_length of 640 (GPT-J has 2048).
    model = hub_fixtures.tiny_causal_lm(root / "model", texts, n_positions=CONTEXT)
    return {
        "model": model,
        "sft_dataset": sft,
        "preference_dataset": comparisons,
        "max_prompt_tokens": MAX_PROMPT_TOKENS,
    }
