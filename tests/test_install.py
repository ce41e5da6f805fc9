"""`pip install .` into a clean virtual environment puts the plugins under the bench namespace only."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from importlib.metadata import distribution
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_installs_plugins_under_bench(tmp_path):
    # Build from a copy of the sources, so no build/ directory is left in (or reused from) the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("bench", "algorithms", "tasks", "evaluators"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheels.glob("alignment_bench-*.whl")
    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=False)  # no site packages of ours: nothing but the wheel
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = (
        "import importlib.util, json, sysconfig, os\n"
        "from importlib.metadata import entry_points\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "spec = {m: importlib.util.find_spec(m) is not None for m in "
        "['bench.algorithms.dpo', 'bench.tasks.sentiment', 'bench.evaluators.kl',"
        " 'algorithms', 'tasks', 'evaluators']}\n"
        "eps = {g: sorted(e.value for e in entry_points(group=g))"
        " for g in ['bench.algorithms', 'bench.tasks', 'bench.evaluators']}\n"
        "print(json.dumps({'spec': spec, 'top': sorted(os.listdir(site)), 'eps': eps}))\n"
    )
    out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    import json

    found = json.loads(out.stdout)
    assert found["spec"] == {
        "bench.algorithms.dpo": True,
        "bench.tasks.sentiment": True,
        "bench.evaluators.kl": True,
        "algorithms": False,
        "tasks": False,
        "evaluators": False,
    }
    assert not {"algorithms", "tasks", "evaluators"} & set(found["top"])
    # Every built-in entry point names a module that exists in the installed tree.
    ours = {
        ep.group: sorted(e.value for e in distribution("alignment-bench").entry_points if e.group == ep.group)
        for ep in distribution("alignment-bench").entry_points
        if ep.group.startswith("bench.")
    }
    for group, values in ours.items():
        assert set(values) <= set(found["eps"][group])
        for value in values:
            module = value.split(":")[0]
            assert module.startswith("bench.")
            check = subprocess.run(
                [str(python), "-c", f"import importlib.util; assert importlib.util.find_spec({module!r})"],
                capture_output=True,
                text=True,
                cwd=tmp_path,
            )
            assert check.returncode == 0, (module, check.stderr)
