"""An outside package adds an online algorithm (a minimal RLOO, as reinforce-loo) that runs on the harness's loop
with no checkpoint code of its own: `bench run` trains it, a run killed with SIGKILL resumes to the uninterrupted
record, and `bench table` and `bench report` show it beside the outside SLiC plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli
from plugins import install

RLOO = [
    "run",
    "--algo",
    "reinforce-loo",
    "--task",
    "sentiment",
    *TINY,
    *("--set", "train.max_steps=4"),
    *("--set", "train.checkpoint_every=2"),
    *("--set", "train.batch_size=8"),
    *("--set", "reinforce-loo.k=2"),
    *("--set", "reinforce-loo.prompts_per_update=4"),
    *("--set", "eval.max_prompts=8"),
    *("--set", "run.eval_checkpoints=1"),
    *("--set", "run.save_model=false"),
]
RECORD_FILES = ("metrics.json", "train_log.jsonl", "samples.jsonl", "checkpoints.jsonl")

# `bench ARGS` that kills its own process with SIGKILL right after the loop's first checkpoint: no
# finally block or lock release runs, exactly as `kill -9` from outside, at a known moment.
KILLED_AFTER_CHECKPOINT = r"""
import os, signal, sys
from bench import train

save = train._save_checkpoint
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
train._save_checkpoint = save_then_die
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> dict:
    """Both outside plugins pip-installed into their own directory, put on the path of the CLI only."""
    return install(tmp_path_factory.mktemp("plugin_site"), "plugin_online", "plugin_example")


@pytest.fixture(scope="module")
def results(plugin_site, cache_dir, tmp_path_factory) -> Path:
    """One uninterrupted rloo run and one slic run in a results directory."""
    results = tmp_path_factory.mktemp("results")
    for args in (RLOO, ["run", "--algo", "slic", "--task", "sentiment", *TINY, "--set", "run.save_model=false"]):
        proc = run_cli([*args, "--results", str(results)], cache_dir, plugin_site)
        assert proc.returncode == 0, proc.stderr
    return results


def _record(results: Path, algo: str) -> Path:
    (record,) = [p for p in results.iterdir() if p.name.startswith(f"sentiment-{algo}-")]
    return record


def test_rloo_runs_through_bench_run(results):
    record = _record(results, "reinforce-loo")
    config = json.loads((record / "config.json").read_text())["config"]
    assert config["algo"] == {"name": "reinforce-loo", "k": 2, "prompts_per_update": 4, "beta": 0.05}
    log = [json.loads(line) for line in (record / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    assert all(row["episodes"] == 8 and row["tokens"] > row["sampled_tokens"] > 0 for row in log)
    assert {"loss", "grad_norm", "lr", "objective/kl", "objective/scores", "objective/rlhf_reward"} <= set(log[0])
    assert log[0]["objective/kl"] == 0.0  # the first rollout comes from the reference's own weights
    points = [json.loads(line) for line in (record / "checkpoints.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [2, 4]  # on_step evaluated the midpoint, then the final policy
    cost = json.loads((record / "cost.json").read_text())
    assert cost["preference_labels"] == 0 and cost["sampled_tokens"] == sum(row["sampled_tokens"] for row in log)
    assert "gold_reward" in json.loads((record / "metrics.json").read_text())


def test_rloo_killed_with_sigkill_resumes_to_the_uninterrupted_record(plugin_site, cache_dir, tmp_path, results):
    args = [*RLOO, "--results", str(tmp_path)]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_CHECKPOINT, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_CACHE_DIR": str(cache_dir), "OMP_WAIT_POLICY": "PASSIVE", **plugin_site},
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # nothing visible but the partial run
    proc = run_cli(args, cache_dir, plugin_site)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 2" in proc.stdout, proc.stdout
    for name in RECORD_FILES:
        assert (_record(tmp_path, "reinforce-loo") / name).read_text() == (
            _record(results, "reinforce-loo") / name
        ).read_text(), name


def test_table_and_report_show_both_outside_plugins(plugin_site, cache_dir, tmp_path, results):
    table = run_cli(["table", "--task", "sentiment", "--results", str(results)], cache_dir, plugin_site)
    assert table.returncode == 0, table.stderr
    assert "| reinforce-loo |" in table.stdout and "| slic |" in table.stdout
    out = tmp_path / "report"
    report = run_cli(
        ["report", "--task", "sentiment", "--results", str(results), "--out", str(out)], cache_dir, plugin_site
    )
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "reinforce-loo" in text and "slic" in text
    assert (out / "curves-reinforce-loo.png").exists()  # the online plugin's training curves, from its train log
