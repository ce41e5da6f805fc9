"""Built-in evaluators, installed as bench.evaluators and registered through entry points."""
