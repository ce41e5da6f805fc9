"""A local stand-in for cnn_dailymail 3.0.0 (columns article, highlights, id; splits train, validation, test).

The articles are short invented news stories written for these tests, in the dataset's style: a
dateline, "(CNN) --" openings, highlights as one sentence per line ending in " .". One article
(LONG_ID) is far longer than `MAX_ARTICLE_CHARS`, so the task's cut has something to do.
"""

from __future__ import annotations

from pathlib import Path

import hub_fixtures

MAX_ARTICLE_CHARS = 600
"""eval_task.max_article_chars for the fixture: above every short article, below the long one."""
LONG_ID = "f3a9c1e07b2d4a6e8f0c1b2a3d4e5f60718293a4"

ARTICLES = [
    (
        "LONDON, England (CNN) -- A rare copy of an eighteenth-century atlas sold at auction on Tuesday for twice its "
        "estimate. The buyer, a private collector from Scotland, bid by telephone. The auction house said interest in "
        "old maps has grown steadily over the past decade.",
        "Rare eighteenth-century atlas sells for twice its estimate .\nBuyer is a private collector from Scotland .",
    ),
    (
        "(CNN) -- City officials opened a new cycle lane along the river on Monday, closing one lane to cars. Cyclists "
        "welcomed the change, while some shop owners worried about deliveries. The council will review traffic after "
        "six months.",
        "New riverside cycle lane replaces a car lane .\nShop owners worry about deliveries .\nCouncil to review "
        "traffic after six months .",
    ),
    (
        "SYDNEY, Australia (CNN) -- Lifeguards closed two beaches after a large shark was seen close to swimmers. No "
        "one was hurt. Drones were sent to track the animal, which swam back out to sea within an hour.",
        "Two Sydney beaches closed after shark sighting .\nNo injuries; drones tracked the shark until it left .",
    ),
    (
        "(CNN) -- A school in a small mountain town will stay open after parents raised money to repair its roof. The "
        "district had planned to close it because of the cost. Fifty-two children attend the school.",
        "Parents raise money to repair roof of threatened mountain school .\nDistrict had planned closure over costs .",
    ),
    (
        "By . Daily Mail Reporter . A retired teacher has finished walking the entire coastline of Wales, a journey "
        "of more than 870 miles. She raised money for a children's hospital and said the hardest part was the rain.",
        "Retired teacher walks the 870-mile Wales coastline .\nShe raised money for a children's hospital .",
    ),
    (
        "NEW YORK (CNN) -- The city's oldest bakery will close next month after 110 years. The owners said rising rent "
        "made it impossible to continue. Customers lined up around the block on Saturday for a last loaf.",
        "New York's oldest bakery to close after 110 years .\nOwners blame rising rent .",
    ),
    (
        "(CNN) -- Scientists have found a new species of frog in a cloud forest. The frog is smaller than a thumbnail "
        "and has bright orange legs. Researchers say the forest is under threat from logging.",
        "Tiny orange-legged frog discovered in cloud forest .\nResearchers warn forest is threatened by logging .",
    ),
    (
        "By . Associated Press . A power cut left 40,000 homes without electricity for most of Sunday after a storm "
        "brought down lines. Engineers restored supply by the evening. The utility apologised to customers.",
        "Storm cuts power to 40,000 homes for most of Sunday .\nSupply restored by the evening .",
    ),
    (
        "PARIS, France (CNN) -- A museum has returned a painting to the family of its original owner, decades after it "
        "was taken during the war. The family said they were grateful and plan to lend it back for exhibitions.",
        "Museum returns wartime-looted painting to original owner's family .\nFamily plans to lend it back .",
    ),
    (
        "(CNN) -- A football club has banned a supporter for life after he threw a bottle onto the pitch. Nobody was "
        "injured. The club said it would not tolerate violence at its ground.",
        "Club bans fan for life for throwing bottle onto the pitch .",
    ),
    (
        "By . Daily Mail Reporter . A dog missing for three weeks was found 30 miles from home, after a walker "
        "recognised it from posters. The owners said they had almost given up hope.",
        "Dog missing for three weeks found 30 miles away .\nWalker recognised it from posters .",
    ),
    (
        "TOKYO, Japan (CNN) -- A high-speed train line will run trial services next year, cutting the journey between "
        "two cities to under an hour. Officials said "
        + "the trains have passed every safety test so far and " * 14
        + "the opening date depends on final inspections.",
        "High-speed line to run trials next year .\nJourney between the two cities will take under an hour .",
    ),
    (
        "(CNN) -- A library has received a book that was borrowed in 1965, together with a letter of apology and a "
        "cheque for the fine. Staff said they would frame the letter.",
        "Book borrowed in 1965 returned with apology and fine .",
    ),
]
LONG_INDEX = 11


def row(i: int) -> dict:
    article, highlights = ARTICLES[i]
    return {"article": article, "highlights": highlights, "id": LONG_ID if i == LONG_INDEX else f"{i:040x}"}


def make(root: Path) -> dict:
    """Write the dataset under `root`; return the eval-task settings that point at it."""
    path = hub_fixtures.write_dataset(
        Path(root) / "cnn_dailymail",
        {
            "train": [row(i) for i in range(4)],
            "validation": [row(i) for i in range(4, 7)],
            "test": [row(i) for i in range(len(ARTICLES))],
        },
    )
    return {"dataset": path, "max_article_chars": MAX_ARTICLE_CHARS}
