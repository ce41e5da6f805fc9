"""`bench sweep --jobs N`: runs at once in processes of their own, the same records as one after another.

The real sweep runs a reward model and two best-of-N runs that need it on the tiny task, beside a run
that fails; the other cases check the loop itself (failures, exit status, Ctrl-C) with stand-in
processes, and the bad values of --jobs. tests/test_faults_concurrency.py checks the artifact lock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY
from faults import assert_user_error, bench_main, entries

from bench import records, runner, sweep

SETS = [*TINY, "--set", "eval.max_prompts=4", "--set", "run.save_model=false"]

# Loaded into the sweep and each of its run processes (sitecustomize on PYTHONPATH): notes every artifact
# build that actually runs, whichever process runs it.
SPY = """
import os
from bench import artifacts

_build_once = artifacts.build_once

def build_once(artifact_dir, build, *args, **kwargs):
    def noted(tmp):
        with open(os.environ["BENCH_TEST_BUILDS"], "a") as f:
            f.write(f"{artifact_dir}\\n")
        return build(tmp)
    return _build_once(artifact_dir, noted, *args, **kwargs)

artifacts.build_once = build_once
"""


def _fresh_cache(cache_dir: Path, path: Path) -> Path:
    """The session's tiny task build alone: no reward model or reference log-probs cached yet."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(cache_dir / "sentiment", path / "sentiment")
    return path


def _files(run: Path) -> dict[str, str]:
    """A record's files; cost.json without its wall times (of phases and of evaluators), the one thing two runs of a
    record may differ in."""
    out = {str(p.relative_to(run)): p.read_text() for p in sorted(run.rglob("*")) if p.is_file()}
    cost = json.loads(out.pop("cost.json"))
    del cost["wall_time_s"], cost["evaluator_time_s"]
    out["cost.json"] = json.dumps(cost, sort_keys=True)
    return out


def test_parallel_sweep_writes_the_sequential_records_and_trains_the_shared_reward_model_once(cache_dir, tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    args = [
        "sweep",
        "--task",
        "sentiment",
        "--algo",
        "reward-model,best-of-n,ppo",
        "--grid",
        "best-of-n.n=2,4",
        *SETS,
        "--set",
        f"ppo.reward_model={bad_model}",  # one run that fails once its model is loaded: exit status 2
        "--results",
        str(results),
        "--cache",
        str(cache),
    ]
    # One after another with one torch thread: the runs of --jobs 2 below get one each on 2 threads, and the
    # numbers of a run depend on its thread count in the last bits (sums are split differently), so records
    # compare equal only at the same count.
    _fresh_cache(cache_dir, cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = bench_main(args, cache)
    finally:
        torch.set_num_threads(threads)
    assert code == 2 and "no config.json there" in err, err  # the ppo run, last in the sweep
    shutil.move(results, tmp_path / "sequential")
    sequential = {r.name: _files(r) for r in records.complete_runs(tmp_path / "sequential")}
    assert len(sequential) == 3

    # The same sweep, at most 2 runs at once, in the same results and cache paths, so that even the paths
    # the records hold are the same.
    _fresh_cache(cache_dir, cache)
    spy, builds = tmp_path / "spy", tmp_path / "builds.txt"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SPY)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "2",  # the threads the sweep splits, whatever this machine has
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": os.pathsep.join([str(spy), os.environ.get("PYTHONPATH", "")]),
        "BENCH_TEST_BUILDS": str(builds),
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "bench"), *args[:1], "--jobs", "2", *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "up to 2 runs at once, 1 torch thread each" in proc.stdout, proc.stdout

    parallel = {r.name: _files(r) for r in records.complete_runs(results)}
    assert parallel == sequential  # config.json (command line included), logs, samples, metrics: all the same
    for name, files in parallel.items():
        assert json.loads(files["config.json"])["torch_threads"] == 1
        assert f"{name}: gold_reward " in proc.stdout  # each run's summary line, as it finished
    # The reward model the three runs share was trained once, by one of them; the task was built before.
    (model,) = (cache / "reward_models").iterdir()
    assert builds.read_text().splitlines() == [str(model)]
    for name in parallel:
        assert json.loads(parallel[name]["metrics.json"])["reward_model_accuracy"]["path"] == str(model)

    # The failed run: one line with its name and its last error line, then the summary; its output is kept.
    lines = [line for line in proc.stderr.splitlines() if "failed" in line]
    assert len(lines) == 2, proc.stderr
    ppo = lines[0].split(":")[0]
    assert ppo.startswith("sentiment-ppo-") and ppo not in parallel
    assert lines[0].startswith(f"{ppo}: failed (exit 2): error: reward model {bad_model}: no config.json there")
    assert lines[1].startswith("error: 1 of 4 runs failed"), proc.stderr
    assert entries(results / ".partial") == {f"{ppo}.log"}

    code, out, _ = bench_main(["table", "--task", "sentiment", "--results", results], cache)
    assert code == 0 and "3 complete runs" in out and "| best-of-n | n=4 |" in out and "| reward-model |" in out


# ---------------------------------------------------------------- the loop, with stand-in run processes


def _stand_in(script: str):
    """A `child_command` that runs `script` (with NAME, RESULTS and the run's seed) instead of `bench run`."""

    def command(spec, results):
        name = runner.resolve(spec, Path(results) / ".." / "cache").name
        head = f"NAME, RESULTS, SEED = {name!r}, {str(results)!r}, {spec.seed}\n"
        return [sys.executable, "-c", head + textwrap.dedent(script)]

    return command


STAND_IN = """
    import os, pathlib, sys, time
    print("threads", os.environ["OMP_NUM_THREADS"], flush=True)
    if SEED == 1:
        print("Traceback (most recent call last):\\nRuntimeError: something broke", file=sys.stderr)
        sys.exit(1)
    if SEED == 2:
        sys.exit("error: --set data.sft=x.jsonl: no rows")  # as the CLI reports a UserError, with status 1 here
    if SEED == 3:
        print("error: --set data.sft=x.jsonl: no rows", file=sys.stderr)
        sys.exit(2)
    run = pathlib.Path(RESULTS) / NAME
    run.mkdir(parents=True)
    (run / "COMPLETE").write_text("")
    print(f"{NAME}: gold_reward 0.5 ± 0.1")
"""


def _plan(tmp_path: Path, seeds: list[int]) -> list[sweep.Planned]:
    return sweep.plan(sweep.expand("sentiment", ["sft"], [], seeds, list(TINY[1::2])), tmp_path / "r", tmp_path / "c")


def test_failed_runs_are_reported_by_name_and_the_others_finish(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "child_command", _stand_in(STAND_IN))
    results = tmp_path / "r"
    planned = _plan(tmp_path, [0, 1, 3, 4])
    with pytest.raises(sweep.RunsFailed) as failed:
        sweep.run(planned, results, tmp_path / "c", jobs=3)
    assert failed.value.status == 1 and failed.value.total == 4  # a crash among them: status 1
    names = {p.spec.seed: p.name for p in planned}
    crashed, refused = failed.value.lines
    assert crashed.startswith(f"{names[1]}: failed (exit 1): RuntimeError: something broke (its output: ")
    assert refused.startswith(f"{names[3]}: failed (exit 2): error: --set data.sft=x.jsonl: no rows")
    assert {p.name for p in records.complete_runs(results)} == {names[0], names[4]}
    assert entries(results / ".partial") == {f"{names[1]}.log", f"{names[3]}.log"}  # the others' are gone
    threads = max(1, torch.get_num_threads() // 3)  # the threads of this process, split between 3 jobs
    assert f"threads {threads}\n" in (results / ".partial" / f"{names[1]}.log").read_text()
    out = capsys.readouterr().out
    assert f"{names[0]}: gold_reward 0.5 ± 0.1" in out and "4 to run" in out

    # Only refusals (status 2): the sweep's status is 2; rerun, the complete runs are skipped.
    with pytest.raises(sweep.RunsFailed) as failed:
        sweep.run(_plan(tmp_path, [0, 3, 4]), results, tmp_path / "c", jobs=2)
    assert failed.value.status == 2 and len(failed.value.lines) == 1 and failed.value.total == 1
    # A process exiting 1 with an error-like line is not a refusal: status 1.
    with pytest.raises(sweep.RunsFailed) as failed:
        sweep.run(_plan(tmp_path, [2]), results, tmp_path / "c", jobs=2)
    assert failed.value.status == 1 and "error: --set data.sft=x.jsonl: no rows" in failed.value.lines[0]


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt in this process, as in a terminal. A shell without job control (a CI
    script, `cmd &`) starts its background commands with SIGINT ignored, and Python then never raises it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("ignores_sigint", [False, True])
def test_ctrl_c_stops_every_run_process(tmp_path, monkeypatch, ignores_sigint, ctrl_c_raises):
    started = tmp_path / "started"
    started.mkdir()
    script = f"""
        import os, pathlib, signal, time
        if {ignores_sigint}:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        pathlib.Path({str(started)!r}, str(os.getpid())).write_text("")
        time.sleep(120)
    """
    monkeypatch.setattr(sweep, "child_command", _stand_in(script))
    monkeypatch.setattr(sweep, "STOP_SECONDS", 1.0)

    def interrupt():
        while len(list(started.iterdir())) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sweep.run(_plan(tmp_path, [0, 1, 2]), tmp_path / "r", tmp_path / "c", jobs=2)
    assert time.monotonic() - t0 < 60
    pids = [int(p.name) for p in started.iterdir()]
    assert len(pids) == 2  # the third run never started
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_jobs_values_are_one_line(tmp_path, value):
    results = tmp_path / "results"
    code, _, err = bench_main(
        ["sweep", "--task", "sentiment", "--algo", "sft", f"--jobs={value}", "--results", results], tmp_path
    )
    assert_user_error(code, err, f"--jobs {value}: give how many runs to run at once", results)


def test_jobs_with_submitit_is_refused(tmp_path):
    results = tmp_path / "results"
    args = ["sweep", "--task", "sentiment", "--algo", "sft", "--jobs", "2", "--dispatch", "submitit"]
    code, _, err = bench_main([*args, "--results", results], tmp_path)
    assert_user_error(code, err, "--jobs applies to --dispatch local", results)
