"""The CLI end to end in a subprocess, as a user meets it: list, run, skip, reproduce, table, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli


def _run_dirs(results: Path) -> list[Path]:
    return sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")) if results.exists() else []


def _assert_user_error(proc, fragment: str, results: Path):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not results.exists() or not any(results.iterdir()), list(results.rglob("*"))


def test_list_shows_every_plugin(cache_dir):
    proc = run_cli(["list"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    for name in (
        "sft",
        "preferred-ft",
        "unlikelihood",
        "dpo",
        "sentiment",
        "gold-reward",
        "kl",
        "length",
        "pair-accuracy",
    ):
        assert f"  {name} " in proc.stdout
    # One name column: every description starts where the longest name's does.
    rows = [line for line in proc.stdout.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    starts = {len(line) - len(line[2:].split(" ", 1)[1].lstrip()) for line in rows}
    assert len(rows) > 10 and len(starts) == 1, rows
    verbose = run_cli(["list", "--verbose"], cache_dir)
    assert verbose.returncode == 0, verbose.stderr
    assert "beta = 0.1" in verbose.stdout
    # Every option, the harness's sections too, with its default and its field docstring.
    harness = verbose.stdout.split("Every run")[1]
    for section, line in (
        ("train.*", "lr = 0.0001  Peak learning rate"),
        ("eval.*", "max_prompts = 0  Use only the first N evaluation prompts; 0 uses all."),
        ("data.*", "preferences = ''  Training pairs"),
        ("run.*", "eval_checkpoints = 0  Intermediate policies to evaluate"),
    ):
        assert f"  {section} " in harness and line in harness, (section, line)
    assert harness.index("lr = ") < harness.index("eval.*") < harness.index("max_prompts = ") < harness.index("data.*")
    # Where a plugin moves a harness default, its listing says so.
    assert "(train.* defaults: lr=0.0003)" in verbose.stdout  # the reward model's


@pytest.fixture(scope="module")
def dpo_run(cache_dir, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    proc = run_cli(["run", "--algo", "dpo", "--task", "sentiment", *TINY, "--results", str(results)], cache_dir)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = _run_dirs(results)
    return results, run_dir, proc


def test_run_writes_a_complete_record(dpo_run):
    results, run_dir, proc = dpo_run
    assert run_dir.name.startswith("sentiment-dpo-")
    for name in ("config.json", "train_log.jsonl", "samples.jsonl", "metrics.json", "COMPLETE"):
        assert (run_dir / name).is_file(), name
    assert not (results / ".partial").exists() or not any((results / ".partial").iterdir())
    config = json.loads((run_dir / "config.json").read_text())
    # The command line as the user typed it (bench/cli.py hands it to the runner).
    assert config["command"] == f"bench run --algo dpo --task sentiment --set task.scale=tiny --results {results}"
    assert config["config"]["algo"] == {**config["config"]["algo"], "name": "dpo"}
    assert config["config"]["task"]["scale"] == "tiny"
    assert {"torch", "transformers", "python"} <= set(config["versions"])
    assert config["git_revision"] and config["device"] in ("cpu", "cuda")
    assert config["processor"] and config["torch_threads"] >= 1  # where bitwise reproducibility holds
    assert config["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log and {
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    } <= set(log[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("gold_reward", "kl", "kl_mc", "length", "pair_accuracy"):
        assert {"mean", "se", "n"} <= set(metrics[key]), key
    assert 0 <= metrics["gold_reward"]["mean"] <= 1
    assert metrics["gold_reward"]["n"] == metrics["n_prompts"]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == metrics["n_samples"]
    assert {"prompt", "completion", "gold_reward", "kl", "length"} <= set(samples[0])
    assert "sentiment-dpo-" in proc.stdout and "gold_reward" in proc.stdout


def test_saved_policy_loads_with_transformers(dpo_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run_dir, _ = dpo_run
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    assert model.config.vocab_size >= len(tok) - 1


def test_second_run_is_skipped(dpo_run, cache_dir):
    results, run_dir, _ = dpo_run
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    proc = run_cli(["run", "--algo", "dpo", "--task", "sentiment", *TINY, "--results", str(results)], cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "complete, skipped" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_same_config_and_seed_reproduce_the_metrics(dpo_run, cache_dir, tmp_path):
    _, run_dir, _ = dpo_run
    proc = run_cli(["run", "--algo", "dpo", "--task", "sentiment", *TINY, "--results", str(tmp_path)], cache_dir)
    assert proc.returncode == 0, proc.stderr
    (again,) = _run_dirs(tmp_path)
    assert again.name == run_dir.name
    assert json.loads((again / "metrics.json").read_text()) == json.loads((run_dir / "metrics.json").read_text())
    assert (again / "samples.jsonl").read_text() == (run_dir / "samples.jsonl").read_text()


def test_profiled_run_with_activation_checkpointing_writes_profiles_and_the_same_metrics(dpo_run, cache_dir, tmp_path):
    """run.profile writes a trace and per-operator tables; neither it nor recomputing activations changes a metric."""
    _, run_dir, _ = dpo_run
    sets = ["--set", "run.profile=true", "--set", "train.activation_checkpointing=true"]
    proc = run_cli(["run", "--algo", "dpo", "--task", "sentiment", *TINY, *sets, "--results", str(tmp_path)], cache_dir)
    assert proc.returncode == 0, proc.stderr
    (profiled,) = _run_dirs(tmp_path)
    trace = json.loads((profiled / "profile" / "fit_trace.json").read_text())
    assert any("addmm" in event.get("name", "") for event in trace["traceEvents"])
    for name in ("fit", "sample", "evaluate"):
        assert "Self CPU" in (profiled / "profile" / f"{name}.txt").read_text(), name
    want = json.loads((run_dir / "metrics.json").read_text())
    got = json.loads((profiled / "metrics.json").read_text())
    assert got.keys() == want.keys() and "gold_reward" in want
    for key, value in want.items():
        assert (got[key]["mean"] if isinstance(value, dict) else got[key]) == pytest.approx(
            value["mean"] if isinstance(value, dict) else value, abs=1e-6
        ), key


def test_table_lists_the_run(dpo_run, cache_dir):
    results, _, _ = dpo_run
    proc = run_cli(["table", "--task", "sentiment", "--results", str(results)], cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "| dpo | default | 1 |" in proc.stdout and "gold_reward (mean ± 95% CI)" in proc.stdout


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "case",
    [
        "unknown-algo",
        "unknown-task",
        "unknown-key",
        "ill-typed",
        "missing-arg",
        "malformed-row",
        "not-json",
        "empty-completion",
        "empty-prompts",
        "no-such-file",
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, cache_dir, tmp_path):
    results = tmp_path / "results"
    good = {"prompt": "This movie", "chosen": " was great", "rejected": " was awful"}
    args = {
        "unknown-algo": (["--algo", "nope", "--task", "sentiment"], "unknown algorithm 'nope'"),
        "unknown-task": (["--algo", "dpo", "--task", "nope"], "unknown task 'nope'"),
        "unknown-key": (["--algo", "dpo", "--task", "sentiment", "--set", "dpo.betta=1"], "unknown key"),
        "ill-typed": (["--algo", "dpo", "--task", "sentiment", "--set", "dpo.beta=high"], "expected a float"),
        "missing-arg": (["--task", "sentiment"], "--algo"),
        "malformed-row": (
            [
                "--algo",
                "dpo",
                "--task",
                "sentiment",
                "--set",
                f"data.preferences={_write(tmp_path / 'p.jsonl', [good, {'prompt': 'x', 'chosen': 'y'}])}",
            ],
            "row 2: 'rejected' is missing",
        ),
        "not-json": (
            [
                "--algo",
                "dpo",
                "--task",
                "sentiment",
                "--set",
                f"data.preferences={_write(tmp_path / 'bad_json.jsonl', [good, '{oops'])}",
            ],
            "line 2: not valid JSON",
        ),
        "empty-completion": (
            [
                "--algo",
                "sft",
                "--task",
                "sentiment",
                "--set",
                f"data.sft={_write(tmp_path / 's.jsonl', [{'prompt': 'x', 'completion': ''}])}",
            ],
            "'completion' is empty",
        ),
        "empty-prompts": (
            ["--algo", "dpo", "--task", "sentiment", "--set", f"data.eval_prompts={_write(tmp_path / 'e.jsonl', [])}"],
            "evaluation prompt set is empty",
        ),
        "no-such-file": (["--algo", "dpo", "--task", "sentiment", "--set", "data.sft=/no/such.jsonl"], "no such file"),
    }[case]
    proc = run_cli(["run", *args[0], *TINY, "--results", str(results)], cache_dir)
    _assert_user_error(proc, args[1], results)
