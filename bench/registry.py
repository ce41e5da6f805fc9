"""Plugin discovery through entry points. Built-ins register exactly like third-party packages."""

from __future__ import annotations

from importlib.metadata import entry_points

from bench.errors import UserError

GROUPS = {"algorithm": "bench.algorithms", "task": "bench.tasks", "evaluator": "bench.evaluators"}


def _entry_points(kind: str) -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUPS[kind])}


def names(kind: str) -> list[str]:
    return sorted(_entry_points(kind))


def load(kind: str, name: str):
    """The plugin class registered as `name`; an unknown name is the user's error."""
    eps = _entry_points(kind)
    if name not in eps:
        raise UserError(
            f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(eps)) or '(none installed)'} (see `bench list`)"
        )
    try:
        cls = eps[name].load()
    except ImportError as exc:
        raise UserError(
            f"the {kind} plugin {name!r} ({eps[name].value}) failed to import: {exc}; "
            "reinstall the package that provides it"
        ) from exc
    if getattr(cls, "name", name) != name:
        # Entry-point name and the plugin's own name must agree: run records use the latter.
        raise UserError(f"the {kind} plugin registered as {name!r} calls itself {cls.name!r}; fix its entry point")
    return cls
