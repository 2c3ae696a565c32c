"""`python -m scripts.datalist build|check|write_split`: write a datalist, check a dataset, write subject splits."""

import logging

from scripts.cli import run_command
from scripts.datalist.cli import build, check, write_split

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_command(
        {"build": build, "check": check, "write_split": write_split},
        "scripts.datalist",
        user_errors=(ValueError, FileExistsError, FileNotFoundError, NotADirectoryError),
    )
