"""Built-in tasks, installed as bench.tasks and registered through entry points."""
