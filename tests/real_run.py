"""`make test-real`: the paper tasks end to end with a real pretrained model (SmolLM2-135M), offline.

Runs `bench run` for sft and dpo (LoRA) on tldr, hh and truthy, and dpo on tldr evaluated on
cnn-dm, each in its own process, on the local datasets of tests/real_data.py, with a judge behind
a local OpenAI-compatible server. Each run's wall time, peak resident memory (os.wait4 on the
`bench run` process) and the load average before and after are written to
<results>/measurements.json and printed as a table with the runs' main metrics.

The judge is served on 127.0.0.1 by tests/openai_stub.py's server. By default it is scripted: it
prefers the completion sharing more words with the text judged (the post, question or article),
the shorter one on a tie, and answers with the template's verdict line. `--judge smollm2` puts
SmolLM2-135M-Instruct (transformers, greedy, in this process) behind the same server instead: a
real model's answers through the judge's parsing, at about a minute more per run. Either tests the
judge's plumbing, not a judge.

    python tests/real_run.py --results results/real [--judge scripted|smollm2] [--only tldr-sft,...]

Complete runs are skipped, so an interrupted `make test-real` continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai_stub  # noqa: E402
import real_data  # noqa: E402

MODEL = "smollm2-135m"
JUDGE_PORT = 18431
"""The scripted judge's port: fixed, as judge.base_url is part of a run's id (a rerun must find its runs)."""

COMMON = [
    f"task.model={MODEL}",
    "train.lora_r=16",
    "train.lora_alpha=32",
    "train.max_length=192",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.log_every=2",
    "eval.max_prompts=16",
    "eval.batch_size=8",
    "eval.max_new_tokens=48",
    "judge.api_key_env=BENCH_REAL_JUDGE_KEY",
]
"""Settings of every run: the model, LoRA, lengths, and evaluation on 16 prompts."""
ALGO = {
    "sft": ["train.lr=2e-4"],
    "dpo": ["train.lr=5e-5", "train.batch_size=4"],
}
TASK = {
    "tldr": [
        "task.max_sft_examples=128",
        "task.max_train_pairs=64",
        "task.max_test_pairs=32",
        "task.max_prompt_tokens=128",
    ],
    "hh": [
        "task.max_train_pairs=128",
        "task.max_test_pairs=32",
        "task.max_prompt_tokens=128",
        "task.sft_steps=4",
        "task.sft_batch_size=8",
        "task.sft_warmup_steps=0",
    ],
    "truthy": ["task.max_train_pairs=128", "task.max_test_pairs=32", "task.max_prompt_tokens=160"],
}
"""Per task: how much of its data a run uses. hh's preferred-FT build is a few steps (it is a full fine-tune)."""
DPO_PAIRS = {"hh": 64, "truthy": 64}
"""DPO trains on fewer pairs than SFT sees demonstrations (a pair costs two sequences)."""
RUNS = [
    ("tldr-sft", "tldr", "sft", None, None),
    ("tldr-dpo", "tldr", "dpo", None, None),
    ("tldr-dpo-from-sft", "tldr", "dpo", None, "tldr-sft"),
    ("tldr-dpo-on-cnn-dm", "tldr", "dpo", "cnn-dm", None),
    ("hh-sft", "hh", "sft", None, None),
    ("hh-dpo", "hh", "dpo", None, None),
    ("truthy-sft", "truthy", "sft", None, None),
    ("truthy-dpo", "truthy", "dpo", None, None),
]
"""(name, task, algorithm, evaluation task, the run whose saved policy is task.model instead of SmolLM2 itself).
tldr-dpo-from-sft is the paper's order, DPO from the SFT policy: it starts from tldr-sft's saved LoRA adapter."""
METRICS = ("judge_win_rate", "length", "kl", "pair_accuracy")


def judge(n: int, prompt: str) -> str:
    """The scripted verdict: more words shared with the text judged wins, then the shorter; the template's format."""
    a, b = openai_stub.shown(prompt)
    context = prompt.replace(a, " ").replace(b, " ")
    words = set(re.findall(r"[a-z']+", context.lower()))

    def score(text: str) -> tuple[int, int]:
        return len(words & set(re.findall(r"[a-z']+", text.lower()))), -len(text)

    letter = "A" if score(a) > score(b) else "B"
    last = [line for line in prompt.splitlines() if line.strip()][-1]
    key = last.split(":", 1)[0].strip()  # the template's verdict key ("Preferred", "More helpful")
    return openai_stub.answer(letter, key)


class ModelJudge:
    """SmolLM2-135M-Instruct answering each judge prompt as a chat (greedy, at most JUDGE_TOKENS new tokens)."""

    def __init__(self, cache_dir: Path):
        import threading

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from bench.hub import smollm2_checkpoint

        path = smollm2_checkpoint(cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.lock = threading.Lock()  # the server answers requests on threads; one generation at a time

    def __call__(self, n: int, prompt: str) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with self.lock, torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=JUDGE_TOKENS, do_sample=False)
        return self.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


JUDGE_TOKENS = 48
"""Longest answer of the SmolLM2 judge: room for the template's comparison sentence and verdict line."""


def settings(task: str, algo: str, eval_task: str | None, data: dict[str, dict]) -> list[str]:
    sets = COMMON + ALGO[algo] + TASK[task] + [f"task.{k}={v}" for k, v in data[task].items()]
    if algo == "dpo" and task in DPO_PAIRS:
        sets.append(f"task.max_train_pairs={DPO_PAIRS[task]}")
    if eval_task:
        sets += [f"run.eval_task={eval_task}", "eval_task.max_article_chars=600"]
        sets += [f"eval_task.{k}={v}" for k, v in data[eval_task.replace("-", "_")].items()]
    return sets


def run_one(bench: str, name: str, task: str, algo: str, sets: list[str], results: Path, logs: Path) -> dict:
    """Run `bench run` in a process of its own; its wall time, peak RSS and record, and the load average."""
    cmd = [bench, "run", "--algo", algo, "--task", task, "--results", str(results)]
    for s in sets:
        cmd += ["--set", s]
    log = logs / f"{name}.log"
    load_before = os.getloadavg()
    t0 = time.time()
    start = log.stat().st_size if log.exists() else 0  # each invocation appends to the run's log
    with open(log, "a") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS, not the largest of all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", "replace")
    m = re.findall(r"run record: (\S+)|: complete, skipped \((\S+)\)", text)
    run_dir = next((a or b for a, b in reversed(m)), None)
    row = {
        "run": name,
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "skipped": "complete, skipped" in text,
        "run_dir": run_dir,
        "log": str(log),
    }
    if run_dir and (Path(run_dir) / "metrics.json").exists():
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        row["metrics"] = {k: metrics[k] for k in METRICS if k in metrics}
    return row


def value(metrics: dict, key: str) -> str:
    m = metrics.get(key)
    if isinstance(m, dict):
        m = m.get("mean")
    return "" if m is None else f"{m:.3g}"


def table(rows: list[dict]) -> str:
    head = "| run | wall | peak RSS | load avg (1 min) before -> after | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (4 + len(METRICS))]
    for r in rows:
        status = "" if r["returncode"] == 0 else f" (exit {r['returncode']})"
        if "wall_s" not in r:  # not started
            lines.append(f"| {r['run']}{status} |" + " |" * (3 + len(METRICS)))
            continue
        lines.append(
            f"| {r['run']}{status} | {r['wall_s'] / 60:.1f} min | {r['peak_rss_mb'] / 1024:.1f} GB | "
            f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} | "
            + " | ".join(value(r.get("metrics", {}), k) for k in METRICS)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/real"))
    parser.add_argument("--bench", default=str(Path(sys.executable).with_name("bench")))
    parser.add_argument("--judge", choices=("scripted", "smollm2"), default="scripted")
    parser.add_argument("--only", default="", help="comma-separated runs, e.g. tldr-sft,hh-dpo,tldr-dpo-on-cnn-dm")
    args = parser.parse_args(argv)
    results = args.results.resolve()
    data_dir, logs = results / "data", results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "settings.json").exists():
        data = {t: {k: str(v) for k, v in s.items()} for t, s in real_data.make(data_dir).items()}
        (data_dir / "settings.json").write_text(json.dumps(data, indent=1))
    data = json.loads((data_dir / "settings.json").read_text())
    os.environ.setdefault("BENCH_REAL_JUDGE_KEY", "local")
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    summary = results / "measurements.json"
    # A run skipped as complete keeps the measurement of the invocation that ran it.
    measured = {r["run_dir"]: r for r in json.loads(summary.read_text())["runs"]} if summary.exists() else {}
    rows = []
    if args.judge == "smollm2":
        from bench.cli import default_cache_dir

        script = ModelJudge(default_cache_dir())
        judge_sets = [f"judge.model={MODEL}", f"judge.max_tokens={JUDGE_TOKENS}"]
    else:
        script, judge_sets = judge, ["judge.model=scripted"]
    try:
        server = openai_stub.StubServer(script, port=JUDGE_PORT)
    except OSError as exc:
        print(f"error: cannot serve the scripted judge on 127.0.0.1:{JUDGE_PORT}: {exc}", file=sys.stderr)
        return 2
    with server:
        run_dirs: dict[str, str] = {}
        for name, task, algo, eval_task, start in RUNS:
            if only and name not in only:
                continue
            sets = settings(task, algo, eval_task, data) + judge_sets + [f"judge.base_url={server.url}"]
            if start:
                if not run_dirs.get(start):
                    print(f"error: {name} starts from {start}, which has no complete run here", file=sys.stderr)
                    rows.append({"run": name, "returncode": 2, "skipped": False, "run_dir": None})
                    continue
                sets.append(f"task.model={run_dirs[start]}/model")
            print(f"== {name}", flush=True)
            row = run_one(args.bench, name, task, algo, sets, results, logs)
            run_dirs[name] = row["run_dir"] if row["returncode"] == 0 else None
            if row["skipped"] and not measured.get(row["run_dir"], {}).get("skipped", True):
                row = measured[row["run_dir"]]
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    summary.write_text(
        json.dumps({"cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"), "runs": rows}, indent=1)
    )
    print(table(rows))
    print(f"measurements: {summary}")
    failed = [r["run"] for r in rows if r["returncode"] != 0]
    if failed:
        print(f"error: runs failed: {', '.join(failed)} (logs in {logs})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
