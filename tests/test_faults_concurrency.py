"""One writer per run, and runs killed with -9 at several moments resume to the uninterrupted result.

Two identical commands on one results directory end with one record whose train log is an
uninterrupted run's; two identical sweeps share their runs and do each once; a process killed while
it holds a run's lock does not block the rerun; two processes needing one artifact build it once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, run_cli

SMALL = [
    *TINY,
    "--set",
    "train.max_steps=6",
    "--set",
    "train.log_every=1",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "run.save_model=false",
]
PPO_SMALL = [
    *TINY,
    "--set",
    "train.max_steps=4",
    "--set",
    "train.log_every=1",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "train.batch_size=8",
    "--set",
    "ppo-gt.rollout_batch_size=16",
    "--set",
    "ppo-gt.ppo_epochs=2",
    "--set",
    "eval.max_prompts=8",
    "--set",
    "run.save_model=false",
]
ONLINE = ("rloo", "grpo", "online-dpo")


def online_small(algo: str) -> list[str]:
    """Four updates of a group-sampling online algorithm, checkpointed every two; grpo on the learned reward."""
    reward = "model" if algo == "grpo" else "gold"
    return [
        *TINY,
        *("--set", "train.max_steps=4"),
        *("--set", "train.log_every=1"),
        *("--set", "train.checkpoint_every=2"),
        *("--set", f"train.batch_size={2 if algo == 'online-dpo' else 8}"),  # online DPO's minibatches are pairs
        *("--set", "eval.max_prompts=8"),
        *("--set", "run.save_model=false"),
        *("--set", f"{algo}.prompts_per_update=4"),
        *("--set", f"{algo}.reward={reward}"),
        *("--set", "run.eval_checkpoints=1"),
    ]


RECORD_FILES = ("metrics.json", "train_log.jsonl", "samples.jsonl", "checkpoints.jsonl")

# Runs `bench ARGS` and kills its own process with SIGKILL at a named moment: no finally block, no
# atexit handler and no lock release run, exactly as `kill -9` from outside, but at a known point.
KILL_AT = r"""
import os, signal, sys
moment = sys.argv[1]
from bench import io, runner, train

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def after(module, name, when=lambda *a, **k: True):
    original = getattr(module, name)
    def wrapped(*a, **k):
        out = original(*a, **k)
        if when(*a, **k):
            kill()
        return out
    setattr(module, name, wrapped)

if moment == "checkpoint":  # right after the first resumable checkpoint
    after(train, "_save_checkpoint")  # the one checkpoint writer, online algorithms included
elif moment == "evaluate":  # the final policy sampled, its evaluation under way
    evaluate = runner._evaluate
    def killed(*a, **k):
        if not k.get("at_checkpoint"):
            kill()
        return evaluate(*a, **k)
    runner._evaluate = killed
elif moment == "samples":  # samples.jsonl written, the record not yet published
    after(io, "write_jsonl", lambda path, rows: path.name == "samples.jsonl")
elif moment == "metrics":  # metrics.json written, cost.json and COMPLETE not
    after(io, "atomic_write_json", lambda path, obj: path.name == "metrics.json")
from bench.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env(cache: Path) -> dict:
    return {**os.environ, "BENCH_CACHE_DIR": str(cache), "OMP_WAIT_POLICY": "PASSIVE"}


def _records(results: Path) -> list[Path]:
    return sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith("."))


def _no_partial(results: Path) -> bool:
    partial = results / ".partial"
    return not partial.exists() or not any(partial.iterdir())


def _same_record(a: Path, b: Path) -> None:
    for name in RECORD_FILES:
        assert (a / name).read_text() == (b / name).read_text(), name


def _twice_at_once(args: list[str], cache: Path) -> str:
    """`bench ARGS` started twice at the same moment; both must exit cleanly. Returns their stdout, joined."""
    command = [str(Path(sys.executable).parent / "bench"), *args]
    procs = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(cache),
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err, err
    return "".join(out for out, _ in outs)


@pytest.fixture(scope="module")
def uninterrupted(cache_dir, tmp_path_factory) -> dict[str, Path]:
    """The reference records: each command run once, start to end."""
    out = {}
    for algo, sets in (("dpo", SMALL), ("ppo-gt", PPO_SMALL), *((a, online_small(a)) for a in ONLINE)):
        results = tmp_path_factory.mktemp(f"whole-{algo}")
        proc = run_cli(["run", "--algo", algo, "--task", "sentiment", *sets, "--results", str(results)], cache_dir)
        assert proc.returncode == 0, proc.stderr
        (out[algo],) = _records(results)
    return out


def test_online_runs_record_their_sampled_tokens_reward_calls_and_labels(uninterrupted):
    """cost.json of the online runs: 4 updates x 4 prompts x k reward calls; preference labels only where the
    learned reward model (trained on them) scores the samples."""
    for algo, k in (("rloo", 4), ("grpo", 4), ("online-dpo", 2)):
        cost = json.loads((uninterrupted[algo] / "cost.json").read_text())
        assert cost["reward_calls"] == 4 * 4 * k and 0 < cost["sampled_tokens"] <= 4 * 4 * k * 48, algo
        assert (cost["preference_labels"] > 0) == (algo == "grpo"), algo  # grpo: reward=model; the others: gold


def test_two_identical_runs_at_once_make_one_record_of_one_run(cache_dir, tmp_path, uninterrupted):
    stdout = _twice_at_once(
        ["run", "--algo", "dpo", "--task", "sentiment", *SMALL, "--results", str(tmp_path)], cache_dir
    )
    (record,) = _records(tmp_path)
    _same_record(record, uninterrupted["dpo"])
    assert _no_partial(tmp_path)
    assert stdout.count("run record:") == 1, stdout  # one process ran it
    assert stdout.count("complete, skipped") == 1, stdout  # the other waited for it (or came after) and skipped it


def test_a_second_run_waits_for_the_lock_holder_then_runs(cache_dir, tmp_path, uninterrupted):
    from bench.lock import run_lock

    name = uninterrupted["dpo"].name
    args = [
        str(Path(sys.executable).parent / "bench"),
        "run",
        "--algo",
        "dpo",
        "--task",
        "sentiment",
        *SMALL,
        "--results",
        str(tmp_path),
    ]
    with run_lock(tmp_path, name):
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**_env(cache_dir), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            cwd=REPO,
        )
        line = proc.stdout.readline()  # blocks until the command reaches the lock
        assert "in progress in another process" in line and str(os.getpid()) in line, line
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting while we hold it
        assert not (tmp_path / name).exists()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    _same_record(tmp_path / name, uninterrupted["dpo"])
    assert _no_partial(tmp_path)


def test_lock_is_exclusive_and_released_on_every_exit(tmp_path):
    from bench.lock import RunInProgress, lock_path, run_lock

    with run_lock(tmp_path, "r"):
        with pytest.raises(RunInProgress):
            with run_lock(tmp_path, "r", wait=False):
                pass
        with run_lock(tmp_path, "other", wait=False):  # other runs are not blocked
            pass
    with pytest.raises(ValueError):
        with run_lock(tmp_path, "r"):
            raise ValueError("boom")
    with run_lock(tmp_path, "r", wait=False):  # free again after the exception
        pass
    assert not lock_path(tmp_path, "r").exists() and not (tmp_path / ".partial").exists()


def test_a_lock_dies_with_its_process(tmp_path):
    from bench.lock import lock_path, run_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from bench.lock import run_lock\n"
                "with run_lock(Path(sys.argv[1]), 'r'):\n    print('held', flush=True); time.sleep(600)"
            ),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: the lock file stays, unlocked
    holder.wait()
    assert lock_path(tmp_path, "r").exists()
    with run_lock(tmp_path, "r", wait=False):
        pass


def test_two_identical_sweeps_at_once_do_each_run_once(cache_dir, tmp_path):
    stdout = _twice_at_once(
        [
            "sweep",
            "--task",
            "sentiment",
            "--algo",
            "sft,dpo",
            "--seeds",
            "0,1",
            *TINY,
            "--set",
            "train.max_steps=3",
            "--set",
            "run.save_model=false",
            "--results",
            str(tmp_path),
        ],
        cache_dir,
    )
    records = _records(tmp_path)
    assert len(records) == 4
    assert stdout.count("run record:") == 4, stdout  # each run was run by exactly one of the two sweeps
    for record in records:
        steps = [line for line in (record / "train_log.jsonl").read_text().splitlines()]
        assert len(steps) == len(set(steps)), record
    assert _no_partial(tmp_path)


@pytest.mark.parametrize(
    "algo,moment",
    [
        ("dpo", "checkpoint"),
        ("dpo", "evaluate"),
        ("dpo", "samples"),
        ("dpo", "metrics"),
        ("ppo-gt", "checkpoint"),
        ("ppo-gt", "evaluate"),
        *((algo, "checkpoint") for algo in ONLINE),
    ],
)
def test_killed_with_sigkill_then_rerun_gives_the_uninterrupted_record(
    algo, moment, cache_dir, tmp_path, uninterrupted
):
    sets = SMALL if algo == "dpo" else PPO_SMALL if algo == "ppo-gt" else online_small(algo)
    args = ["run", "--algo", algo, "--task", "sentiment", *sets, "--results", str(tmp_path)]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT, moment, *args],
        capture_output=True,
        text=True,
        env=_env(cache_dir),
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        timeout=600,
    )
    assert killed.returncode == -9, killed.stderr
    assert not _records(tmp_path)  # nothing visible but the partial run
    assert (tmp_path / ".partial" / f"{uninterrupted[algo].name}.lock").exists()  # left locked by nobody
    proc = run_cli(args, cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step" in proc.stdout, proc.stdout
    (record,) = _records(tmp_path)
    _same_record(record, uninterrupted[algo])
    assert _no_partial(tmp_path)


BUILDER = """
import sys, time
from pathlib import Path
from bench.artifacts import build_once

def build(tmp):
    with open(sys.argv[2], "a") as f:
        f.write("built\\n")
    print("building", flush=True)
    time.sleep(1.0)
    (tmp / "data.txt").write_text("whole")
    return {}

out = build_once(Path(sys.argv[1]), build, echo=lambda line: print(line, flush=True))
print((out / "data.txt").read_text(), flush=True)
"""


def test_a_second_process_needing_an_artifact_waits_for_its_builder(tmp_path):
    """Two runs needing one task build (or reward model): one builds it, the other waits and reads the whole build."""
    artifact, builds = tmp_path / "cache" / "task" / "abc123", tmp_path / "builds.txt"

    def start():
        command = [sys.executable, "-c", BUILDER, str(artifact), str(builds)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)

    first = start()
    assert first.stdout.readline() == "building\n"  # it holds the artifact's lock now
    second = start()
    waiting = second.stdout.readline()
    assert "being built by another process" in waiting and f"(pid {first.pid})" in waiting, waiting
    outs = [first.communicate(timeout=60)[0], second.communicate(timeout=60)[0]]
    assert [first.returncode, second.returncode] == [0, 0]
    assert outs == ["whole\n", "whole\n"]
    assert builds.read_text() == "built\n"  # built once
    assert sorted(os.listdir(artifact.parent)) == ["abc123"]  # no lock file, no temporary directory left
