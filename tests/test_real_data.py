"""`make test-real`'s inputs: its datasets load through each paper task, and its runs' settings resolve.

The target itself trains SmolLM2-135M for half an hour and is opt-in; these checks are what keeps it
runnable between its runs: tests/real_data.py writes rows each task accepts in full (no row
rejected, only the pairs it must skip skipped), and every `--set` of tests/real_run.py names a key
that exists with a value in range.
"""

from __future__ import annotations

from pathlib import Path

import hub_fixtures
import pytest
import real_data
import real_run

from bench.runner import RunSpec, resolve
from bench.tasks.cnn_dm import CNNDM
from bench.tasks.cnn_dm import Config as CNNConfig
from bench.tasks.hh import HH
from bench.tasks.tldr import TLDR
from bench.tasks.truthy import Truthy


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("real-data")
    out = {task: {k: str(v) for k, v in s.items()} for task, s in real_data.make(root).items()}
    texts = [f"SUBREDDIT: r/movies TITLE: POST: TL;DR: Human: Assistant: {t}" for t, _ in real_data.reviews(50)]
    out["model"] = str(hub_fixtures.tiny_causal_lm(root / "model", texts, n_positions=1024))
    return out


def test_every_row_loads_through_its_task(data, tmp_path):
    tldr = TLDR(TLDR.Config(model=data["model"], max_prompt_tokens=128, **data["tldr"]), tmp_path)
    assert len(tldr.sft_data()) == 400 and len(tldr.preference_data("train")) == 400
    assert len(tldr.eval_prompts()) == 100 and tldr.stats["truncated"] > 100  # long posts exercise the cut
    assert all(p["chosen"] != p["rejected"] for p in tldr.preference_data("train"))

    hh = HH(HH.Config(model=data["model"], reference="base", max_prompt_tokens=900, **data["hh"]), tmp_path)
    multi_turn = {split: sum(1 for i in range(n) if i % 25 == 7) for split, n in (("train", 400), ("test", 100))}
    assert len(hh.preference_data("train")) == 400 - multi_turn["train"]
    assert len(hh.eval_prompts()) == 100 - multi_turn["test"]
    assert hh.stats["multi_turn"] == sum(multi_turn.values())
    assert sum(hh.stats[k] for k in ("prompt_mismatch", "empty_response", "identical_pairs", "long_prompts")) == 0

    truthy = Truthy(Truthy.Config(model=data["model"], max_prompt_tokens=400, **data["truthy"]), tmp_path)
    n_test = len(truthy.eval_prompts())
    assert 25 <= n_test <= 75 and len(truthy.preference_data("train")) + n_test == 500
    assert truthy.stats["identical_pairs"] == 0 and truthy.stats["long_prompts"] == 0

    cnn = CNNDM(CNNConfig(dataset=data["cnn_dm"]["dataset"], max_article_chars=600), tmp_path)
    prompts = cnn.eval_prompts()
    assert len(prompts) == 100 and all(p["reference"] and len(p["prompt"]) <= 600 + len("\nTL;DR:") for p in prompts)


@pytest.mark.parametrize("run", real_run.RUNS, ids=lambda r: r[0])
def test_every_run_of_the_target_resolves(data, tmp_path, run):
    name, task, algo, eval_task, start = run
    sets = real_run.settings(task, algo, eval_task, data) + ["judge.base_url=http://127.0.0.1:1/v1"]
    r = resolve(RunSpec(algo=algo, task=task, sets=sets), Path(tmp_path))
    assert r.train.lora_r > 0 and r.record["task"]["model"] == real_run.MODEL
    assert (r.eval_task is not None) == bool(eval_task) and name.startswith(f"{task}-{algo}")
    assert start is None or start in [other[0] for other in real_run.RUNS[: real_run.RUNS.index(run)]]
