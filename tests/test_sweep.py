"""`bench sweep`: grid expansion, resolving before running, restart after an interruption, dispatch.

The sweep calls the real `bench.runner.execute`; these tests replace it with a recorder that
writes a small complete run record (the runner's own tests cover real runs), and use a toy
task registered for the test, so that nothing here trains a model.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import io as bench_io
from bench import records, registry, runner, sweep
from bench.cli import main
from bench.errors import UserError


@dataclass
class ToyConfig:
    scale: str = "tiny"
    """How big the toy is."""


class ToyTask:
    """A task that only resolves: enough for the sweep, which never builds it here."""

    name = "toy"
    Config = ToyConfig

    def __init__(self, config, cache_dir):
        self.config = config


_installed_load = registry.load


def _load(kind, name):
    if (kind, name) == ("task", "toy"):
        return ToyTask
    return _installed_load(kind, name)


def fake_execute(spec, results, cache_dir, echo=print, wait=True):
    """What runner.execute leaves behind, minus the training: a complete record named by the run id."""
    registry.load = _load  # also in a dispatched job's own process, where the test's patch does not reach
    if spec.seed == 99:
        raise RuntimeError("this run breaks")
    r = runner.resolve(spec, cache_dir)
    final = Path(results) / r.name
    if records.is_complete(final):
        echo(f"{r.name}: complete, skipped")
        return final
    partial = Path(results) / records.PARTIAL / r.name
    # The command the spec carries, as runner.execute records it; None if the sweep handed over none.
    command = shlex.join(spec.command) if spec.command else None
    bench_io.atomic_write_json(
        partial / "config.json",
        {"run_id": r.run_id, "name": r.name, "config": r.record, "command": command},
    )
    bench_io.atomic_write_json(partial / "metrics.json", {"gold_reward": {"mean": 0.5, "se": 0.1, "n": 4}})
    records.publish(partial, final)
    echo(f"{r.name}: done")
    return final


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    monkeypatch.setattr(registry, "load", _load)


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def execute(spec, results, cache_dir, echo=print, wait=True):
        calls.append(runner.resolve(spec, cache_dir).name)
        return fake_execute(spec, results, cache_dir, echo)

    monkeypatch.setattr(runner, "execute", execute)
    return calls


def _sets(specs, algo):
    return sorted((tuple(s.sets), s.seed) for s in specs if s.algo == algo)


def test_grid_expands_per_algorithm_and_skips_keys_an_algorithm_lacks():
    grid = sweep.parse_grid(["algo.beta=0.1,1", "train.lr=1e-4,1e-3"])
    specs = sweep.expand("toy", ["dpo", "sft"], grid, [0, 1], ["dpo.loss_type=ipo", "eval.temperature=0.7"])
    assert len(specs) == 2 * 2 * 2 + 2 * 2  # dpo: beta x lr x seeds; sft has no beta: lr x seeds
    assert ("algo.loss_type=ipo", "eval.temperature=0.7", "algo.beta=0.1", "train.lr=1e-4") in [
        tuple(s.sets) for s in specs
    ]
    assert all(
        "algo.loss_type=ipo" not in s.sets and not any("beta" in x for x in s.sets) for s in specs if s.algo == "sft"
    )
    # An algorithm's own section applies to it only.
    own = sweep.expand("toy", ["dpo", "unlikelihood"], sweep.parse_grid(["unlikelihood.alpha=0.5,1"]), [0])
    assert _sets(own, "dpo") == [((), 0)] and len(_sets(own, "unlikelihood")) == 2
    with pytest.raises(UserError, match="no algorithm in this sweep has it"):
        sweep.expand("toy", ["dpo", "sft"], sweep.parse_grid(["algo.nope=1,2"]), [0])
    with pytest.raises(UserError, match="swept twice"):
        sweep.expand("toy", ["dpo"], sweep.parse_grid(["algo.beta=1", "dpo.beta=2"]), [0])
    with pytest.raises(UserError, match="swept twice"):  # the paper preset already sweeps dpo's beta
        sweep.preset_specs("paper", "sentiment", ["dpo"], None, sweep.parse_grid(["algo.beta=2"]), [])
    with pytest.raises(UserError, match="given twice"):
        sweep.parse_grid(["algo.beta=1", "algo.beta=2"])
    for bad in ("beta=1", "algo.beta", "algo.beta=1,,2"):
        with pytest.raises(UserError, match="SECTION.KEY"):
            sweep.parse_grid([bad])


def test_plan_resolves_everything_first_and_merges_identical_runs(tmp_path, recorder):
    bad = sweep.expand("toy", ["dpo"], sweep.parse_grid(["train.lr=1e-4,-1"]), [0])
    with pytest.raises(UserError, match="train.lr=-1"):
        sweep.run(sweep.plan(bad, tmp_path, tmp_path), tmp_path, tmp_path)
    assert recorder == [] and not any(tmp_path.iterdir())
    # beta=0.1 is dpo's default: the same run as giving no beta; planned once.
    same = sweep.expand("toy", ["dpo"], sweep.parse_grid(["algo.beta=0.1,0.10"]), [0]) + sweep.expand(
        "toy", ["dpo"], [], [0]
    )
    assert len(sweep.plan(same, tmp_path, tmp_path)) == 1


def test_interrupted_sweep_restarts_without_running_a_complete_run_twice(tmp_path, monkeypatch):
    calls, started = [], []

    def execute(spec, results, cache_dir, echo=print, wait=True):
        name = runner.resolve(spec, cache_dir).name
        calls.append(name)
        started.append(name)
        if len(started) == 3:  # killed half way through its third run: a partial record, no COMPLETE
            (Path(results) / records.PARTIAL / name).mkdir(parents=True)
            raise KeyboardInterrupt
        return fake_execute(spec, results, cache_dir, echo)

    monkeypatch.setattr(runner, "execute", execute)
    specs = sweep.expand("toy", ["dpo"], sweep.parse_grid(["algo.beta=0.1,0.2,0.3"]), [0, 1])
    with pytest.raises(KeyboardInterrupt):
        sweep.run(sweep.plan(specs, tmp_path, tmp_path), tmp_path, tmp_path)
    first = list(calls)
    assert len(records.complete_runs(tmp_path)) == 2
    calls.clear()
    planned = sweep.plan(specs, tmp_path, tmp_path)
    assert sum(p.complete for p in planned) == 2
    sweep.run(planned, tmp_path, tmp_path)
    assert len(records.complete_runs(tmp_path)) == 6
    assert not set(first[:2]) & set(calls)  # the two complete runs were not run again
    assert calls[0] == first[2] and len(calls) == 4  # the interrupted run is taken up again, then the rest
    calls.clear()
    sweep.run(sweep.plan(specs, tmp_path, tmp_path), tmp_path, tmp_path)
    assert calls == []


def test_cli_sweep(tmp_path, recorder, capsys, monkeypatch):
    argvs, inner = [], runner.execute
    monkeypatch.setattr(runner, "execute", lambda *a, **kw: argvs.append(list(sys.argv)) or inner(*a, **kw))
    args = [
        "sweep",
        "--task",
        "toy",
        "--algo",
        "dpo,sft",
        "--grid",
        "algo.beta=0.1,0.5",
        "--seeds",
        "0,1",
        "--results",
        str(tmp_path / "r"),
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main(args + ["--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 6 and all(line.startswith("to run") for line in listed) and recorder == []
    assert "bench run --algo dpo --task toy --seed 0 --set algo.beta=0.1" in listed[0]
    assert main(args) == 0 and len(recorder) == 6
    assert "6 runs, 0 complete (skipped), 6 to run" in capsys.readouterr().out
    assert main(args) == 0 and len(recorder) == 6
    assert "6 runs, 6 complete (skipped), 0 to run" in capsys.readouterr().out
    # Each record names the `bench run` command that reproduces it, handed over in the spec; sys.argv is left alone.
    planned = {
        p.name: p.spec
        for p in sweep.plan(
            sweep.expand("toy", ["dpo", "sft"], sweep.parse_grid(["algo.beta=0.1,0.5"]), [0, 1]),
            tmp_path / "r",
            tmp_path / "c",
        )
    }
    for run in records.complete_runs(tmp_path / "r"):
        config = json.loads((run / "config.json").read_text())
        assert config["command"] == shlex.join(sweep.run_command(planned[run.name], tmp_path / "r"))
        assert config["command"].startswith(f"bench run --algo {planned[run.name].algo} --task toy --seed ")
    assert len(argvs) == 6 and all(argv == sys.argv for argv in argvs)  # nobody swapped sys.argv
    assert main(["sweep", "--task", "toy", "--results", str(tmp_path)]) == 2
    assert "--algo" in capsys.readouterr().err
    assert main(["sweep", "--task", "toy", "--algo", "dpo", "--executor", "x=1", "--results", str(tmp_path)]) == 2
    assert "submitit only" in capsys.readouterr().err


def test_paper_preset_skips_algorithms_that_are_not_installed():
    notes = []
    specs = sweep.preset_specs("paper", "sentiment", None, None, [], [], echo=notes.append)
    preset = sweep.PRESETS["paper"]["sentiment"]
    installed = set(registry.names("algorithm"))
    expected = 0
    for entry in preset.entries:
        if entry.algo in installed:
            n = 1
            for values in entry.grid.values():
                n *= len(values)
            expected += n * 3
        else:
            assert any(repr(entry.algo) in note for note in notes)
    assert len(specs) == expected and {s.seed for s in specs} == {0, 1, 2}
    assert all("run.eval_checkpoints=4" in s.sets for s in specs)
    assert sum(s.algo == "reward-model" for s in specs) == 3  # the starting policy, the report's origin
    assert {x for s in specs if s.algo == "dpo" for x in s.sets if "beta" in x} == {
        "algo.beta=0.05",
        "algo.beta=0.1",
        "algo.beta=1",
        "algo.beta=5",
    }
    only = sweep.preset_specs("paper", "sentiment", ["sft"], [7], [], [])
    assert [(s.algo, s.seed) for s in only] == [("sft", 7)]
    with pytest.raises(UserError, match="grids for task sentiment"):
        sweep.preset_specs("paper", "toy", None, None, [], [])
    with pytest.raises(UserError, match="unknown preset"):
        sweep.preset_specs("nope", "sentiment", None, None, [], [])


def test_modern_preset_sweeps_each_new_method_beside_the_papers():
    specs = sweep.preset_specs("modern", "sentiment", None, None, [], [])
    by_algo: dict[str, set] = {}
    for s in specs:
        by_algo.setdefault(s.algo, set()).update(x for x in s.sets if x.startswith("algo."))
    new = {"simpo", "orpo", "kto", "rloo", "grpo", "online-dpo"}
    assert new <= set(by_algo) and {"dpo", "ppo", "sft", "best-of-n", "reward-model"} <= set(by_algo)
    for algo in new:  # each swept over three values of its main knob, which its Config has
        (key,) = {x.split("=")[0] for x in by_algo[algo]}
        assert len(by_algo[algo]) == 3, algo
        fields = {f.name for f in dataclasses.fields(registry.load("algorithm", algo).Config)}
        assert key.removeprefix("algo.") in fields, algo
    assert {s.seed for s in specs} == {0, 1, 2} and all("run.eval_checkpoints=4" in s.sets for s in specs)


def test_submitit_dispatch_writes_the_same_records_as_local(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    import cloudpickle

    # The job runs in another process: ship this module's fake runner there by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setattr(sweep, "POLL_SECONDS", 0.2)
    specs = sweep.expand("toy", ["dpo"], sweep.parse_grid(["algo.beta=0.1,0.5"]), [0])
    results = tmp_path / "results"

    def files(root):
        return {
            p.relative_to(root): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".submitit" not in p.parts
        }

    sweep.run(sweep.plan(specs, results, tmp_path), results, tmp_path)
    local = files(results)
    shutil.move(results, tmp_path / "local")
    # One more run that fails: reported by name once the others are collected.
    broken = sweep.expand("toy", ["sft"], [], [99])
    with pytest.raises(UserError, match=r"1 of 3 runs failed \(toy-sft-"):
        sweep.run(
            sweep.plan(specs + broken, results, tmp_path),
            results,
            tmp_path,
            dispatch="submitit",
            executor_options={"cluster": "local", "timeout_min": 5},
        )
    assert files(results) == local and len(local) == 6
    assert (results / ".submitit").is_dir() and len(records.complete_runs(results)) == 2
    with pytest.raises(UserError, match="--executor"):
        sweep.run(
            sweep.plan(specs + sweep.expand("toy", ["sft"], [], [3]), results, tmp_path),
            results,
            tmp_path,
            dispatch="submitit",
            executor_options={"cluster": "local", "no_such_option": 1},
        )


def test_missing_submitit_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    planned = sweep.plan(sweep.expand("toy", ["sft"], [], [0]), tmp_path, tmp_path)
    with pytest.raises(UserError, match=r"pip install alignment-bench\[cluster\]"):
        sweep.run(planned, tmp_path, tmp_path, dispatch="submitit")


def test_real_tiny_sweep_then_report(tmp_path, cache_dir, capsys):
    """The real runner on the tiny task, a few optimizer steps per run: sweep, sweep again, report."""
    results, out = tmp_path / "results", tmp_path / "report"
    args = [
        "sweep",
        "--task",
        "sentiment",
        "--algo",
        "sft,dpo",
        "--grid",
        "algo.beta=0.1,1",
        "--seeds",
        "0",
        "--set",
        "task.scale=tiny",
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.max_prompts=6",
        "--set",
        "run.eval_checkpoints=1",
        "--set",
        "run.save_model=false",
        "--results",
        str(results),
        "--cache",
        str(cache_dir),
    ]
    assert main(args) == 0
    assert "3 runs, 0 complete (skipped), 3 to run" in capsys.readouterr().out
    runs = records.complete_runs(results)
    assert len(runs) == 3 and all(len(bench_io.read_jsonl(r / "checkpoints.jsonl")) == 2 for r in runs)
    # The real runner records the equivalent `bench run` command of each run, not the sweep's command line.
    commands = {json.loads((r / "config.json").read_text())["command"] for r in runs}
    assert (
        "bench run --algo dpo --task sentiment --seed 0 --set task.scale=tiny --set train.max_steps=2 "
        "--set eval.max_prompts=6 --set run.eval_checkpoints=1 --set run.save_model=false --set algo.beta=1 "
        f"--results {results}"
    ) in commands and all(c.startswith("bench run --algo ") for c in commands)
    assert main(args) == 0 and "3 runs, 3 complete (skipped), 0 to run" in capsys.readouterr().out
    assert main(["report", "--task", "sentiment", "--results", str(results), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "![sentiment: reward vs KL frontier](frontier.png)" in text and "| dpo | sft |" in text
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
