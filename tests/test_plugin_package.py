"""An outside package adds an algorithm through an entry point and runs through `bench run`."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, run_cli
from plugins import install


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> dict:
    """The example plugin pip-installed into its own directory, put on the path of the CLI only."""
    return install(tmp_path_factory.mktemp("plugin_site"), "plugin_example")


def test_plugin_is_listed(plugin_site, cache_dir):
    proc = run_cli(["list"], cache_dir, plugin_site)
    assert proc.returncode == 0, proc.stderr
    assert "  slic " in proc.stdout and "SLiC-HF" in proc.stdout
    assert "  slic " not in run_cli(["list"], cache_dir).stdout  # only because of the installed package


def test_plugin_runs_through_bench_run(plugin_site, cache_dir, tmp_path):
    proc = run_cli(
        ["run", "--algo", "slic", "--task", "sentiment", *TINY, "--set", "slic.delta=2", "--results", str(tmp_path)],
        cache_dir,
        plugin_site,
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("sentiment-slic-")]
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["algo"]["delta"] == 2.0
    assert "gold_reward" in json.loads((run_dir / "metrics.json").read_text())
    table = run_cli(["table", "--task", "sentiment", "--results", str(tmp_path)], cache_dir, plugin_site)
    assert "| slic |" in table.stdout


def test_a_nan_loss_ends_cleanly(plugin_site, cache_dir, tmp_path):
    results = tmp_path / "results"
    proc = run_cli(
        [
            "run",
            "--algo",
            "slic",
            "--task",
            "sentiment",
            *TINY,
            "--set",
            "slic.poison_loss=true",
            "--results",
            str(results),
        ],
        cache_dir,
        plugin_site,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("slic:", "\r"))]
    assert any(line.startswith("error: slic: the loss became nan at step 1") for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not results.exists() or not any(results.iterdir())
