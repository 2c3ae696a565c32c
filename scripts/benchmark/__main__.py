"""`python -m scripts.benchmark`: the command line of `run` (its docstring is the help)."""

from scripts.benchmark.runner import BenchmarkOptionError, run
from scripts.cli import run_command

if __name__ == "__main__":
    run_command(run, "scripts.benchmark", user_errors=(BenchmarkOptionError,), serialize=lambda _: None)
