"""Built-in algorithms, installed as bench.algorithms and registered through entry points."""
