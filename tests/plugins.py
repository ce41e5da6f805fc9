"""Outside plugin packages (tests/plugin_*) installed the way a user installs one, into a directory of their own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def install(site: Path, *packages: str) -> dict:
    """pip-install the named packages under tests/ into `site`; returns the environment that puts them on the path."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
    subprocess.run([*command, *(str(HERE / p) for p in packages)], check=True, capture_output=True, text=True)
    return {"PYTHONPATH": str(site)}
