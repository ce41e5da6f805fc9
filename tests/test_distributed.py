"""Several processes (accelerate launch, gloo on CPU): sharding helpers, data-parallel gradients, a whole run.

The multi-process tests start two processes with `accelerate launch --multi_gpu --num_processes 2`; on a
machine without GPUs (CUDA_VISIBLE_DEVICES is emptied for them) accelerate then joins them over gloo on
the CPU. (`accelerate launch --cpu --num_processes 2` starts one process unless given an MPI hostfile.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, run_cli
from tiny import tiny_gpt2

from bench import distributed, fsdp, records
from bench.errors import UserError
from bench.train import check_strategy

ACCELERATE = Path(sys.executable).parent / "accelerate"


# ------------------------------------------------------------------------- the helpers, in one process


@pytest.mark.parametrize("strided", [True, False])
def test_shard_then_unshard_gives_the_items_back_in_order(strided):
    for n in range(0, 12):
        items = [f"item{i}" for i in range(n)]
        for world in range(1, 6):
            parts = [distributed.shard(items, rank=r, world=world, strided=strided) for r in range(world)]
            assert sorted(x for p in parts for x in p) == sorted(items)  # each item exactly once
            assert max(map(len, parts)) - min(map(len, parts)) <= 1  # shares differ by one item at most
            assert distributed.unshard(parts, strided=strided) == items


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 3"):
        distributed.shard([1, 2], rank=3, world=3)


def test_one_process_helpers_are_plain():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast([1, 2]) == [1, 2]
    assert distributed.all_true(True) and not distributed.all_true(False)
    assert distributed.run_on_main(lambda: 7) == 7
    assert distributed.map_sharded(lambda k, job: (k, job * 2), [5, 6, 7]) == [(0, 10), (1, 12), (2, 14)]
    distributed.barrier()


def test_map_sharded_in_a_fake_world_keeps_job_indices_and_order(monkeypatch):
    """Each rank runs jobs k = rank, rank + world, ... with their own k (a sampling batch seeds itself with it);
    the gathered results come back in job order on every rank."""
    world, jobs = 3, [f"job{i}" for i in range(8)]
    calls: dict[int, list[int]] = {}

    def fn_for(r):
        return lambda k, job: calls.setdefault(r, []).append(k) or f"{job}@{k}"

    # What every rank computes, as gather would collect it: the fake world runs the ranks one after another.
    parts = [[f"{jobs[k]}@{k}" for k in distributed.shard(range(len(jobs)), rank=r, world=world)] for r in range(world)]
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "gather", lambda obj: parts)
    for r in range(world):
        monkeypatch.setattr(distributed, "_rank", lambda r=r: r)
        out = distributed.map_sharded(fn_for(r), jobs)
        assert out == [f"job{k}@{k}" for k in range(8)]
        assert calls[r] == list(range(r, 8, world))
        assert distributed.my_jobs(len(jobs)) == calls[r]


def test_strategies_the_loop_does_not_implement_are_refused_in_one_line():
    from accelerate.utils import DistributedType

    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_strategy(kind)
    check_strategy(DistributedType.FSDP, fsdp_version=2)
    with pytest.raises(UserError, match="FSDP version 1 is not supported.*fsdp_version: 2.*fsdp2.yaml"):
        check_strategy(DistributedType.FSDP, fsdp_version=1)
    with pytest.raises(UserError, match="DEEPSPEED strategy is not supported.*ddp.yaml or configs/accelerate/fsdp2"):
        check_strategy(DistributedType.DEEPSPEED)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP version 1 is not supported"),  # accelerate's default version
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DEEPSPEED strategy is not supported"),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"},
            "fsdp_offload_params is not supported with FSDP2; set fsdp_offload_params: false",
        ),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"},
            "set fsdp_activation_checkpointing: false and --set train.activation_checkpointing=true",
        ),
        (
            {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"},
            "fsdp_auto_wrap_policy SIZE_BASED_WRAP is not supported",
        ),
    ],
)
def test_a_launch_asking_for_what_the_loop_does_not_implement_stops_before_anything_is_built(
    monkeypatch, tmp_path, env, message
):
    from bench.runner import RunSpec, execute

    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(UserError, match=message):
        execute(RunSpec(algo="dpo", task="sentiment", sets=["task.scale=tiny"]), tmp_path / "r", tmp_path / "c")
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_fsdp2_shards_one_unit_per_transformer_block(monkeypatch):
    """The blocks named by the model's _no_split_modules (through a wrapper around it, as PPO's value head is),
    or by FSDP_TRANSFORMER_CLS_TO_WRAP, which must exist in the model."""
    model = tiny_gpt2()
    wrapper = torch.nn.ModuleDict({"policy": model, "value": torch.nn.Linear(4, 1)})
    assert {cls.__name__ for cls in fsdp._layer_classes(wrapper)} == {"GPT2Block"}
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "NO_WRAP")
    assert fsdp._layer_classes(model) == set()
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "GPT2Block,LlamaDecoderLayer")
    with pytest.raises(UserError, match="names LlamaDecoderLayer, which the model does not have"):
        fsdp._layer_classes(model)


def test_a_skeleton_holds_no_weights_and_keeps_ties_and_buffers():
    model = tiny_gpt2()
    bare = fsdp.skeleton(model)
    assert all(p.is_meta for p in bare.parameters())
    assert bare.lm_head.weight is bare.transformer.wte.weight  # tied weights stay one parameter
    assert all(not b.is_meta for b in bare.buffers())
    assert all(not p.is_meta for p in model.parameters())  # the model itself is untouched


def test_accelerate_config_files_parse_with_accelerate_and_name_their_strategy():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "ddp.yaml": ("MULTI_GPU", None),
        "fsdp2.yaml": ("FSDP", 2),
        "zero2.yaml": ("DEEPSPEED", 2),
        "zero3.yaml": ("DEEPSPEED", 3),
    }
    folder = REPO / "configs" / "accelerate"
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(expected)
    for name, (kind, level) in expected.items():
        config = load_config_from_file(str(folder / name))
        assert config.distributed_type.name == kind, name
        assert config.mixed_precision == "bf16", name
        assert config.num_processes > 1, name
        if kind == "FSDP":
            assert int(config.fsdp_config["fsdp_version"]) == level
        if kind == "DEEPSPEED":
            assert int(config.deepspeed_config["zero_stage"]) == level


# ------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STRATEGIES = {"ddp": ["--multi_gpu"], "fsdp2": ["--use_fsdp", "--fsdp_version", "2"]}
"""accelerate launch's flags for each strategy bench trains with (`--use_fsdp` stands for `--multi_gpu`)."""


def launch(
    args: list[str], env_extra: dict | None = None, timeout: int = 300, strategy: str = "ddp"
) -> subprocess.CompletedProcess:
    """`accelerate launch` of two processes on this machine's CPU (gloo), on a port of their own."""
    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed")
    command = [str(ACCELERATE), "launch", *STRATEGIES[strategy], "--num_processes", "2", "--num_machines", "1"]
    command += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_WAIT_POLICY": "PASSIVE", **(env_extra or {})}
    return subprocess.run(
        command + args, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO
    )


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_data_parallel_gradients_and_weights_equal_one_process(tmp_path, strategy):
    """Loop.optimizer_step in two processes hands the optimizer the one-process gradient (after DDP's average,
    or FSDP2's reduce-scatter gathered whole), with even shares, several micro-batches per process, a partial
    micro-batch and unequal shares; a run stopped after a checkpoint resumes to the uninterrupted weights."""
    worker = str(REPO / "tests" / "ddp_worker.py")
    one = subprocess.run(
        [sys.executable, worker, str(tmp_path / "one.pt")],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch([worker, str(tmp_path / "two.pt")], strategy=strategy)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (a["world"], b["world"]) == (1, 2)
    assert (a["sharded"], b["sharded"]) == (False, strategy == "fsdp2")
    assert b["optimizer"] == ("SGD" if strategy == "fsdp2" else "AcceleratedOptimizer")
    assert (a["layout"], b["layout"]) == ("replicated", "sharded" if strategy == "fsdp2" else "replicated")
    for run in (a, b):
        assert run["resumed_steps"] == [3, 4]  # the rerun went on from step 2's checkpoint
        for name, w in run["once"].items():
            torch.testing.assert_close(run["resumed"][name], w, rtol=0, atol=0, msg=name)
    for setting, x in a["results"].items():
        y = b["results"][setting]
        assert len(x["grads"]) == len(y["grads"]) == 3
        for gx, gy in zip(x["grads"], y["grads"]):
            for p, q in zip(gx, gy):
                torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=f"gradient, setting {setting}")
        for name, w in x["weights"].items():
            torch.testing.assert_close(y["weights"][name], w, rtol=1e-5, atol=1e-6, msg=f"{name}, {setting}")
        for rx, ry in zip(x["rows"], y["rows"]):
            assert rx["tokens"] == ry["tokens"]  # summed over the processes
            assert rx["lr"] == ry["lr"]  # the schedule advances once per step, not once per process
            for key in ("loss", "logps", "grad_norm"):
                assert ry[key] == pytest.approx(rx[key], rel=1e-5), (setting, key)


def _only_record(results: Path) -> Path:
    runs = [p for p in results.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1, runs
    assert not (results / records.PARTIAL).exists()
    return runs[0]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_two_process_run_records_once_and_equals_one_process(cache_dir, tmp_path, strategy):
    """accelerate launch of `bench run` with two processes, the policy replicated (DDP) or sharded (FSDP2): one
    complete record, written once, with the samples and metrics of the same run in one process
    (eval.batch_size=16 gives 4 sampling batches to share out) and a saved model that loads whole."""
    args = ["run", "--algo", "dpo", "--task", "sentiment", *TINY, "--set", "eval.batch_size=16"]
    one = run_cli([*args, "--results", str(tmp_path / "one")], cache_dir)
    assert one.returncode == 0, one.stderr
    start = time.time()
    two = launch(
        ["-m", "bench.cli", *args, "--results", str(tmp_path / "two")],
        {"BENCH_CACHE_DIR": str(cache_dir)},
        strategy=strategy,
    )
    elapsed = time.time() - start
    assert two.returncode == 0, two.stderr[-3000:]
    print(f"two-process run: {elapsed:.1f} s")
    # The main process alone prints: one summary line, one record line.
    assert two.stdout.count("run record:") == 1, two.stdout
    a, b = _only_record(tmp_path / "one"), _only_record(tmp_path / "two")
    assert a.name == b.name  # the same run: the number of processes is no part of its id
    assert records.is_complete(b)
    rec_a, rec_b = records.load_record(a), records.load_record(b)
    config_a, config_b = (json.loads((p / "config.json").read_text()) for p in (a, b))
    assert config_b["processes"] == 2 and "processes" not in config_a
    assert config_b.get("sharding") == ("fsdp2" if strategy == "fsdp2" else None) and "sharding" not in config_a
    from transformers import AutoModelForCausalLM

    saved_a, saved_b = (AutoModelForCausalLM.from_pretrained(p / "model") for p in (a, b))
    for (name, p), q in zip(saved_a.named_parameters(), saved_b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)  # whole weights, not one process's shard

    samples_a, samples_b = records.read_samples(a), records.read_samples(b)
    assert len(samples_b) == len(samples_a) == 64
    assert [s["prompt"] for s in samples_b] == [s["prompt"] for s in samples_a]
    same = sum(x["completion_ids"] == y["completion_ids"] for x, y in zip(samples_a, samples_b))
    # Equal weights give equal samples (every sampling batch keeps its prompts and seed). Data-parallel training
    # ends within float rounding of one process (Adam turns that into ~1e-5 in the weights), which could flip a
    # token, and a flip changes only its own batch's later draws: at least 3 of the 4 batches stay equal.
    assert same >= 48, f"{same} of 64 samples equal"
    for key, agg in rec_a.metrics.items():
        if isinstance(agg, dict) and "mean" in agg:
            other = rec_b.metrics[key]
            assert other["n"] == agg["n"], key
            assert abs(other["mean"] - agg["mean"]) <= max(agg["se"], 1e-6), (key, agg, other)
    cost_a, cost_b = (json.loads((p / "cost.json").read_text()) for p in (a, b))
    assert cost_b["train_tokens"] == cost_a["train_tokens"]  # both processes' tokens counted
    log_a, log_b = ([json.loads(line) for line in (p / "train_log.jsonl").read_text().splitlines()] for p in (a, b))
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]
    for ra, rb in zip(log_a, log_b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["lr"] == ra["lr"]


# `python -m bench.cli`'s stand-in under accelerate launch: the main process kills itself (SIGKILL) right after
# the run's first resumable checkpoint, when every process has taken part in writing it; the launcher then stops
# the other process, as it would after a crash.
KILLED_AFTER_CHECKPOINT = r"""
import os, signal, sys
from bench import distributed, train

save = train._save_checkpoint
def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    if distributed.is_main():
        os.kill(os.getpid(), signal.SIGKILL)
train._save_checkpoint = save_then_die
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_two_process_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_record(cache_dir, tmp_path, strategy):
    """kill -9 of the main process after step 2's checkpoint, then the same launch again: the run resumes from the
    checkpoint on both processes (whole state dicts, sharded again under FSDP2) and ends with the record of an
    uninterrupted two-process run, file for file."""
    args = ["run", "--algo", "dpo", "--task", "sentiment", *TINY, "--set", "train.checkpoint_every=2"]
    env = {"BENCH_CACHE_DIR": str(cache_dir)}
    whole = launch(["-m", "bench.cli", *args, "--results", str(tmp_path / "whole")], env, strategy=strategy)
    assert whole.returncode == 0, whole.stderr[-3000:]
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AFTER_CHECKPOINT)
    killed = launch([str(script), *args, "--results", str(tmp_path / "resumed")], env, strategy=strategy)
    assert killed.returncode != 0
    assert not [p for p in (tmp_path / "resumed").iterdir() if not p.name.startswith(".")]  # only the partial run
    resumed = launch(["-m", "bench.cli", *args, "--results", str(tmp_path / "resumed")], env, strategy=strategy)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 2" in resumed.stdout, resumed.stdout
    a, b = _only_record(tmp_path / "whole"), _only_record(tmp_path / "resumed")
    for name in ("metrics.json", "train_log.jsonl", "samples.jsonl", "checkpoints.jsonl"):
        assert (b / name).read_text() == (a / name).read_text(), name


@pytest.mark.parametrize("algo", ["ppo-gt", "grpo"])
def test_online_rl_with_fsdp2_equals_ddp(cache_dir, tmp_path, algo):
    """PPO trains a value-head wrapper around the policy, samples each rollout on one process and scores it on
    all of them; GRPO (bench.online) scores its rollouts with the sharded policy itself. Sharded (FSDP2), the
    run's record has DDP's metrics (both within float rounding of the other's gradients, so within the
    standard errors)."""
    args = ["-m", "bench.cli", "run", "--algo", algo, "--task", "sentiment", *TINY, "--set", "eval.batch_size=16"]
    env = {"BENCH_CACHE_DIR": str(cache_dir)}
    runs = {}
    for strategy in sorted(STRATEGIES):
        proc = launch([*args, "--results", str(tmp_path / strategy)], env, strategy=strategy)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = records.load_record(_only_record(tmp_path / strategy))
    ddp, sharded = runs["ddp"].metrics, runs["fsdp2"].metrics
    for key, agg in ddp.items():
        if isinstance(agg, dict) and "mean" in agg:
            assert abs(sharded[key]["mean"] - agg["mean"]) <= max(agg["se"], 1e-6), (key, agg, sharded[key])


def fake_execute(spec, results, cache_dir, echo=print):
    """A run's stand-in for a submitit job: the processes meet, and the main one says who came."""
    ranks = distributed.gather(distributed.rank())
    out = Path(results) / f"{spec.algo}-{spec.seed}.json"
    if distributed.is_main():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"world": distributed.world_size(), "ranks": ranks}))
    distributed.barrier()
    return str(out)


def test_a_submitit_job_of_two_tasks_is_one_run_in_two_processes(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    import cloudpickle

    from bench import runner, sweep

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job runs fake_execute in other processes
    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setattr(sweep, "POLL_SECONDS", 0.2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    planned = sweep.plan(sweep.expand("sentiment", ["dpo"], [], [0]), tmp_path / "results", tmp_path)
    options = {"cluster": "local", "timeout_min": 5, "tasks_per_node": 2}
    (done,) = sweep.run(planned, tmp_path / "results", tmp_path, dispatch="submitit", executor_options=options)
    assert json.loads(Path(done).read_text()) == {"world": 2, "ranks": [0, 1]}


def test_bench_sweep_launched_as_several_processes_says_what_to_launch(monkeypatch, capsys):
    from bench.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sweep", "--task", "sentiment", "--algo", "dpo", "--dry-run"]) == 2
    assert "launch each run's `bench run` command" in capsys.readouterr().err
