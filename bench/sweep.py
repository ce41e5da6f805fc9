"""Sweeps: a grid of settings x seeds expanded into runs, run on this machine or on a cluster.

    bench sweep --task sentiment --algo dpo,unlikelihood --grid algo.beta=0.05,0.1 --seeds 0,1,2

Every run is resolved before any starts, so a bad key or value fails at once. Complete runs are
skipped and interrupted ones resumed (the runner recognises a run by its id), so an interrupted
sweep is finished by running the same command again.

Dispatch. `local` runs one run after another in this process; with `--jobs N`, up to N at once, each
as its `bench run` command in a process of its own with 1/N of the torch threads (on small models,
several one-thread processes do more than one process using every thread). `submitit` hands each run to
submitit as one job: a Slurm job array where Slurm is found (`srun` on PATH), local subprocesses
otherwise (or with `--executor cluster=local`). A job of several tasks (`--executor tasks_per_node=N`,
with as many GPUs) is one run in N processes, data-parallel, as under accelerate launch.
submitit rather than Ray: the clusters alignment researchers share are mostly Slurm, and
submitit needs nothing running on them (no head node, no object store), only a shared
filesystem, which the results directory already has to be; a job is a pickled function call,
here the very `runner.execute` that local dispatch calls, so the records are the same
whichever dispatcher ran them. It is an optional dependency: `pip install alignment-bench[cluster]`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench import registry, runner
from bench.checks import comma_list
from bench.errors import UserError
from bench.lock import RunInProgress
from bench.records import PARTIAL, is_complete


@dataclass
class PresetEntry:
    """One algorithm's part of a preset."""

    algo: str
    """The algorithm's registered name; an entry whose algorithm is not installed is skipped."""
    grid: dict[str, list[str]] = field(default_factory=dict)
    """Option of the algorithm's Config -> the values to sweep."""
    sets: list[str] = field(default_factory=list)
    """Fixed settings for this algorithm's runs (`SECTION.KEY=VALUE`)."""


@dataclass
class Preset:
    """A named sweep for one task."""

    entries: list[PresetEntry]
    """The algorithms and their grids."""
    seeds: list[int]
    """Every setting runs once per seed."""
    sets: list[str] = field(default_factory=list)
    """Settings every run of the preset gets."""


PRESETS: dict[str, dict[str, Preset]] = {
    # The DPO paper's controlled-sentiment grids (arXiv:2305.18290, section 6.1 and appendix);
    # intermediate checkpoints give each run several (KL, reward) points, as in the paper's frontier.
    "paper": {
        "sentiment": Preset(
            entries=[
                PresetEntry("dpo", {"beta": ["0.05", "0.1", "1", "5"]}),
                PresetEntry("ppo", {"target_kl": ["3", "6", "9", "12"]}),
                PresetEntry("ppo-gt", {"target_kl": ["3", "6", "9", "12"]}),
                PresetEntry("unlikelihood", {"alpha": ["0.05", "0.1", "0.5", "1"]}),
                # One run per seed gives best-of-1, 4, 16 and 64 from one set of 64 candidates (frontier_points).
                PresetEntry("best-of-n", {"n": ["64"]}),
                PresetEntry("sft"),
                PresetEntry("preferred-ft"),
                # The starting policy, the frontier's origin (KL 0), scored like the others; it trains the
                # reward model PPO and best-of-N share, once per seed.
                PresetEntry("reward-model"),
            ],
            seeds=[0, 1, 2],
            sets=["run.eval_checkpoints=4"],
        ),
    },
    # The 2024 methods beside the paper's, each with its main knob swept, at the paper preset's seeds and
    # checkpoints; the paper's methods at their defaults, as the reference points.
    "modern": {
        "sentiment": Preset(
            entries=[
                PresetEntry("simpo", {"beta": ["2", "5", "10"]}),
                PresetEntry("orpo", {"lam": ["0.05", "0.1", "0.5"]}),
                PresetEntry("kto", {"beta": ["0.05", "0.1", "0.5"]}),
                PresetEntry("rloo", {"beta": ["0.02", "0.05", "0.1"]}),
                PresetEntry("grpo", {"beta": ["0.02", "0.05", "0.1"]}),
                PresetEntry("online-dpo", {"beta": ["0.05", "0.1", "0.5"]}),
                PresetEntry("dpo"),
                PresetEntry("ppo"),
                PresetEntry("ppo-gt"),
                PresetEntry("best-of-n", {"n": ["64"]}),
                PresetEntry("sft"),
                PresetEntry("reward-model"),  # the starting policy: the origin
            ],
            seeds=[0, 1, 2],
            sets=["run.eval_checkpoints=4"],
        ),
    },
}

POLL_SECONDS = 5.0
"""How often submitit dispatch checks its jobs (a Slurm query each time, so not too often)."""
CHILD_POLL_SECONDS = 0.2
"""How often `--jobs` checks its run processes (a wait call each, cheap)."""
STOP_SECONDS = 10.0
"""How long an interrupted `--jobs` sweep lets its run processes stop on their own before killing them."""


@dataclass
class Planned:
    """A resolved run of the sweep."""

    spec: runner.RunSpec
    name: str
    complete: bool


def parse_grid(items: list[str]) -> list[tuple[str, str, list[str]]]:
    """`["algo.beta=0.05,0.1"]` -> [("algo", "beta", ["0.05", "0.1"])]; a key given twice is an error."""
    out, seen = [], set()
    for item in items:
        key, eq, values = item.partition("=")
        section, dot, name = key.strip().partition(".")
        vals = [v.strip() for v in values.split(",")]
        if not eq or not dot or not section or not name or not all(vals):
            raise UserError(f"--grid {item}: expected SECTION.KEY=V1,V2,..., e.g. --grid algo.beta=0.05,0.1")
        if (section, name) in seen:
            raise UserError(f"--grid {section}.{name} given twice; list all its values in one --grid")
        seen.add((section, name))
        out.append((section, name, vals))
    return out


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in comma_list(text)]
    except ValueError:
        raise UserError(f"--seeds {text}: expected comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds:
        raise UserError("--seeds: give at least one seed, e.g. --seeds 0")
    return sorted(set(seeds))


def _config_keys(algo: str) -> set[str]:
    return {f.name for f in dataclasses.fields(registry.load("algorithm", algo).Config)}


def expand(
    task: str, algos: list[str], grid: list[tuple[str, str, list[str]]], seeds: list[int], sets: list[str] | None = None
) -> list[runner.RunSpec]:
    """The cartesian product of the grid and the seeds, for each algorithm.

    A grid key in the `algo` section applies to each algorithm whose Config has it and is skipped
    for the others (an error only when no algorithm has it); a key in an algorithm's own section
    (`dpo.beta`) applies to that algorithm only, as does a `--set` in it. Other sections apply to all.
    """
    keys = {algo: _config_keys(algo) for algo in algos}
    for section, name, _ in grid:
        if section == "algo" and not any(name in k for k in keys.values()):
            known = "; ".join(f"{a}: {', '.join(sorted(k)) or '(none)'}" for a, k in keys.items())
            raise UserError(f"--grid algo.{name}: no algorithm in this sweep has it ({known})")
    specs = []
    for algo in algos:
        axes, swept = [], set()
        for section, name, values in grid:
            if (section == "algo" and name not in keys[algo]) or (section in keys and section != algo):
                continue
            section = "algo" if section == algo else section
            if (section, name) in swept:
                raise UserError(
                    f"--grid {section}.{name}: swept twice for {algo} (as algo.{name} and {algo}.{name}, "
                    "or by the preset too); give its values once"
                )
            swept.add((section, name))
            axes.append([f"{section}.{name}={v}" for v in values])
        for combo in itertools.product(*axes):
            for seed in seeds:
                specs.append(
                    runner.RunSpec(algo=algo, task=task, seed=seed, sets=_own_sets(algo, algos, sets) + list(combo))
                )
    return specs


def _own_sets(algo: str, algos: list[str], sets: list[str] | None) -> list[str]:
    """The `--set`s for one algorithm: its own section spelled `algo.`, other algorithms' sections dropped."""
    out = []
    for item in sets or []:
        section, dot, rest = item.partition(".")
        if section.strip() == algo:
            out.append(f"algo.{rest}")
        elif section.strip() not in algos:
            out.append(item)
    return out


def preset_specs(
    name: str,
    task: str,
    algos: list[str] | None,
    seeds: list[int] | None,
    grid: list[tuple[str, str, list[str]]],
    sets: list[str],
    echo: Callable[[str], None] = print,
) -> list[runner.RunSpec]:
    """The runs of a named preset (optionally only `algos`, other `seeds`, an extra grid and settings).

    A preset entry whose algorithm is not installed is reported and skipped.
    """
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown preset; presets are {', '.join(sorted(PRESETS))}")
    if task not in PRESETS[name]:
        raise UserError(f"--preset {name} has grids for task {', '.join(sorted(PRESETS[name]))}, not {task!r}")
    preset = PRESETS[name][task]
    if algos is not None:
        missing = sorted(set(algos) - {e.algo for e in preset.entries})
        if missing:
            raise UserError(f"--preset {name} has no grid for {', '.join(missing)}; drop it from --algo")
    installed = set(registry.names("algorithm"))
    entries = [e for e in preset.entries if algos is None or e.algo in algos]
    for entry in entries:
        if entry.algo not in installed:
            echo(f"preset {name}: algorithm {entry.algo!r} is not installed; its runs are skipped")
    entries = [e for e in entries if e.algo in installed]
    for entry in entries:
        unknown = sorted(set(entry.grid) - _config_keys(entry.algo))
        if unknown:
            raise UserError(
                f"--preset {name}: the installed {entry.algo!r} has no option {', '.join(unknown)}; "
                f"its options are {', '.join(sorted(_config_keys(entry.algo)))}"
            )
    grid_algos = [e.algo for e in entries]
    for section, key, _ in grid:
        if section == "algo" and not any(key in _config_keys(a) for a in grid_algos):
            raise UserError(f"--grid algo.{key}: no algorithm in this sweep has it")
    specs = []
    for entry in entries:
        own_grid = [(entry.algo, k, v) for k, v in entry.grid.items()]
        extra = [
            g
            for g in grid
            if g[0] == entry.algo
            or (g[0] == "algo" and g[1] in _config_keys(entry.algo))
            or g[0] not in installed | {"algo"}
        ]
        specs += expand(
            task,
            [entry.algo],
            own_grid + extra,
            seeds or preset.seeds,
            _own_sets(entry.algo, grid_algos, preset.sets + entry.sets + sets),
        )
    return specs


def plan(specs: list[runner.RunSpec], results: Path, cache_dir: Path) -> list[Planned]:
    """Resolve every run (any bad setting fails here, before anything runs); one entry per distinct run."""
    planned, seen = [], set()
    for spec in specs:
        name = runner.resolve(spec, cache_dir).name
        if name in seen:  # e.g. a grid value equal to the default: the same run twice
            continue
        seen.add(name)
        planned.append(Planned(spec, name, is_complete(Path(results) / name)))
    return planned


run_command = runner.run_command
"""The `bench run` command line that reproduces one run of the sweep (written once, in bench.runner)."""


def run_one(
    execute: Callable, spec: runner.RunSpec, results: Path, cache_dir: Path, echo: Callable[[str], None] = print
) -> Path:
    """One job of a sweep, the same under every dispatcher.

    The run record keeps the command line that produced it; for a sweep's run that is the
    equivalent `bench run` command, whichever process (this one, a subprocess, a Slurm node) ran it.
    """
    spec = dataclasses.replace(spec, command=run_command(spec, results))
    join_job_tasks()
    return execute(spec, Path(results), Path(cache_dir), echo)


def join_job_tasks() -> None:
    """Inside a submitit job of several tasks (`--executor tasks_per_node=N`, and nodes=M), make them one run of
    N x M processes: the environment torch.distributed starts from (RANK, WORLD_SIZE, MASTER_ADDR, ...), as
    accelerate launch would set it. Elsewhere (no job, a job of one task, a launcher already set it) nothing."""
    if "WORLD_SIZE" in os.environ or "submitit" not in sys.modules:
        return  # a submitit job has imported submitit to unpickle its function
    import submitit

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job
        return
    if tasks > 1:
        # Every task keeps every GPU of its node in sight; accelerate picks the one of its local rank.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def parse_jobs(text: str) -> int:
    """`--jobs N`: how many runs at once, an integer of at least 1."""
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise UserError(f"--jobs {text}: give how many runs to run at once, an integer of at least 1, e.g. --jobs 2")
    return jobs


class RunsFailed(Exception):
    """Runs of a `--jobs` sweep that failed; the others ran to the end. `lines`: one per failed run."""

    def __init__(self, lines: list[str], total: int, status: int):
        self.lines, self.total, self.status = lines, total, status
        super().__init__(f"{len(lines)} of {total} runs failed")


def run(
    planned: list[Planned],
    results: Path,
    cache_dir: Path,
    dispatch: str = "local",
    executor_options: dict | None = None,
    echo: Callable[[str], None] = print,
    jobs: int = 1,
) -> list[Path]:
    """Run the incomplete runs of `planned` with progress over all of them; returns their directories.

    jobs > 1 (local dispatch): that many at once, in processes of their own; raises RunsFailed at the end
    if any failed."""
    from tqdm.auto import tqdm

    todo = [p for p in planned if not p.complete]
    echo(f"sweep: {len(planned)} runs, {len(planned) - len(todo)} complete (skipped), {len(todo)} to run")
    bar = tqdm(
        total=len(planned), initial=len(planned) - len(todo), unit="run", desc="sweep", dynamic_ncols=True, disable=None
    )
    try:
        if dispatch == "local" and jobs > 1:
            return _run_parallel(todo, results, cache_dir, jobs, bar)
        if dispatch == "local":
            return _run_local(todo, results, cache_dir, bar)
        if dispatch == "submitit":
            return _run_submitit(todo, results, cache_dir, executor_options or {}, bar)
        raise UserError(f"--dispatch {dispatch}: use local or submitit")
    finally:
        bar.close()


def _run_local(todo: list[Planned], results: Path, cache_dir: Path, bar) -> list[Path]:
    """One run after another; a run another process is writing (a second sweep, a `bench run`) is left
    for last and then waited for, so two sweeps started together share the work and do each run once."""
    done, busy = [], []
    for p in todo:
        try:
            done.append(
                run_one(functools.partial(runner.execute, wait=False), p.spec, results, cache_dir, echo=bar.write)
            )
            bar.update(1)
        except RunInProgress:
            busy.append(p)
    for p in busy:
        done.append(run_one(runner.execute, p.spec, results, cache_dir, echo=bar.write))
        bar.update(1)
    return done


def child_command(spec: runner.RunSpec, results: Path) -> list[str]:
    """The process a `--jobs` sweep starts for one run: its `bench run` command, so it records that command."""
    return [sys.executable, "-m", "bench.cli", *run_command(spec, results)[1:]]


def _run_parallel(todo: list[Planned], results: Path, cache_dir: Path, jobs: int, bar) -> list[Path]:
    """Up to `jobs` runs at once, each its `bench run` command in a process of its own, the torch threads split
    evenly between them. Each one's output goes to results/.partial/<run>.log (kept if it fails), so that
    only its summary line reaches this terminal. A run another process is writing, or one needing an
    artifact another run is building (the task, a shared reward model), waits for it in its own process
    (bench.lock). Nothing deadlocks: this process holds no lock, and no process waits for a run's lock while
    it holds an artifact's (artifacts are built before a run's lock is taken or inside it, never around it)."""
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    env = {
        **os.environ,
        "BENCH_CACHE_DIR": str(cache_dir),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",  # the log keeps the order of stdout and stderr: the error line comes last
    }
    logs = Path(results) / PARTIAL
    if todo:
        runner.check_results_dir(Path(results))
        bar.write(
            f"sweep: up to {jobs} runs at once, {threads} torch thread{'s' * (threads != 1)} each; "
            f"each run's output goes to {logs}/<run>.log"
        )
    waiting, running, done, failed, statuses = list(todo), {}, [], [], []
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                p = waiting.pop(0)
                with _open_log(logs / f"{p.name}.log", results) as log:
                    proc = subprocess.Popen(
                        child_command(p.spec, results),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,  # Ctrl-C reaches this process only; it stops the others (below)
                    )
                running[proc] = p
            time.sleep(CHILD_POLL_SECONDS)
            for proc in [q for q in running if q.poll() is not None]:
                p = running.pop(proc)
                log = logs / f"{p.name}.log"
                if proc.returncode == 0 and is_complete(Path(results) / p.name):
                    bar.write(_summary(log, p.name) or f"{p.name}: complete")
                    bar.write(f"run record: {Path(results) / p.name}")
                    log.unlink(missing_ok=True)
                    done.append(Path(results) / p.name)
                    bar.update(1)
                    continue
                how = f"exit {proc.returncode}" if proc.returncode >= 0 else f"killed by signal {-proc.returncode}"
                failed.append(f"{p.name}: failed ({how}): {_last_line(log)} (its output: {log})")
                statuses.append(proc.returncode)
                bar.write(failed[-1])
    except BaseException:
        _stop(list(running))
        raise
    try:
        logs.rmdir()  # only when empty: no other run is in progress, resumable or failed
    except OSError:
        pass
    if failed:
        raise RunsFailed(failed, len(todo), 2 if all(s == 2 for s in statuses) else 1)
    return done


def _open_log(path: Path, results: Path):
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "wb")
        except FileNotFoundError:
            continue  # a finishing run removed the empty .partial/ between our mkdir and open
        except OSError as exc:
            raise UserError(
                f"--results {results}: cannot write {path} ({exc.strerror}); choose a directory you can write to"
            ) from None


def _lines(log: Path) -> list[str]:
    """The last 64 KiB of a run's output as a terminal ends up showing it: what a carriage return overwrote is gone."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [shown for line in text.split("\n") if (shown := line.rsplit("\r", 1)[-1].strip())]


def _summary(log: Path, name: str) -> str | None:
    """The run's own summary line (`name: metric mean ± se, ...`, or `name: complete, skipped`)."""
    return next((line for line in reversed(_lines(log)) if line.startswith(f"{name}: ")), None)


def _last_line(log: Path) -> str:
    return next(reversed(_lines(log)), "(no output)")


def _stop(procs: list[subprocess.Popen]) -> None:
    """Interrupt the run processes as Ctrl-C would (each saves nothing half-written), then kill the ones that linger."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_submitit(todo: list[Planned], results: Path, cache_dir: Path, options: dict, bar) -> list[Path]:
    try:
        import submitit
    except ImportError:
        raise UserError(
            "--dispatch submitit needs the submitit package: pip install alignment-bench[cluster]"
        ) from None
    options = dict(options)
    folder = Path(results) / ".submitit"  # hidden: never mistaken for a run directory
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.pop("cluster", None))
    # submitit's local executor kills a job after 2 minutes unless told otherwise; runs take longer.
    options.setdefault("timeout_min", 24 * 60)
    options.setdefault("name", "bench-sweep")
    try:
        executor.update_parameters(**options)
    except (NameError, ValueError, AssertionError) as exc:
        raise UserError(f"--executor: {str(exc).splitlines()[0]}") from None
    if not todo:
        return []
    jobs = {}
    with executor.batch():  # one Slurm job array for the whole sweep
        for p in todo:
            # runner.execute is looked up now, so the job calls whatever this process would call.
            jobs[p.name] = executor.submit(run_one, runner.execute, p.spec, Path(results), Path(cache_dir))
    names = {id(job): name for name, job in jobs.items()}
    bar.write(f"submitted {len(jobs)} jobs ({executor.cluster}); logs under {folder}")
    done, failed = [], []
    try:
        for job in submitit.helpers.as_completed(list(jobs.values()), poll_frequency=POLL_SECONDS):
            name = names[id(job)]
            try:
                path = Path(job.results()[0])  # task 0 of a job of several tasks (one run)
            except Exception as exc:  # a failed job must not stop the others from being collected
                failed.append(name)
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                bar.write(f"{name}: failed (job {job.job_id}): {last}")
                continue
            done.append(path)
            bar.update(1)
            bar.write(f"{name}: complete ({path})")
    except KeyboardInterrupt:
        # Stop the jobs too: a rerun resumes them, and must not race a job still writing the same run.
        for job in jobs.values():
            job.cancel(check=False)
        raise
    if failed:
        raise UserError(
            f"{len(failed)} of {len(jobs)} runs failed ({', '.join(failed)}); see their logs under "
            f"{folder}, then run the same sweep again to retry them"
        )
    return done


def parse_executor_options(items: list[str]) -> dict:
    """`["gpus_per_node=1", "slurm_partition=gpu"]` -> {"gpus_per_node": 1, "slurm_partition": "gpu"}."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--executor {item}: expected KEY=VALUE, e.g. --executor timeout_min=600")
        value = value.strip()
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                pass
        if value in ("true", "false"):
            value = value == "true"
        out[key.strip()] = value
    return out


def describe(planned: list[Planned], results: Path) -> list[str]:
    """One line per run: its state and the `bench run` command that would produce it."""
    return [
        f"{'complete' if p.complete else 'to run  '}  {p.name}  {shlex.join(run_command(p.spec, results))}"
        for p in planned
    ]


def split_algos(text: str | None) -> list[str] | None:
    if text is None:
        return None
    algos = comma_list(text)
    if not algos:
        raise UserError("--algo: give at least one algorithm, e.g. --algo dpo,sft")
    for algo in algos:
        registry.load("algorithm", algo)  # an unknown name fails here with the list of known ones
    return list(dict.fromkeys(algos))
