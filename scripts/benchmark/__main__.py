"""`python -m scripts.benchmark`: the command line of `run` (its docstring is the help)."""

import fire

from scripts.benchmark.runner import run

if __name__ == "__main__":
    fire.Fire(run, name="scripts.benchmark", serialize=lambda _: None)
