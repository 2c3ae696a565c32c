"""Command-line values that Python Fire hands over as they were typed, checked before they can do harm.

Fire reads `--overwrite False` as the bool False, but `--overwrite false` (lowercase) as the text 'false', and any
non-empty text counts as True in Python: without a check, `--overwrite false` overwrites. `as_bool` is applied to
every bool parameter of the scripts' own Fire entry points (quantify, phantom, export). Bundle configs run with
`python -m monai.bundle run` are checked by `scripts.overrides` instead. `run_command` is the scripts' Fire entry
point: it refuses a misspelt flag before any work (Fire itself reports it only after running the command).
"""

from __future__ import annotations

import difflib
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["TRUE_WORDS", "FALSE_WORDS", "as_bool", "run_command", "unknown_flags"]

TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


def as_bool(value: object, flag: str) -> bool:
    """`value` of the switch `--flag` as a bool: a real bool, 0/1 (Fire reads `--flag 1` as an int) or the texts
    true/false, yes/no, 1/0 in any case; anything else is a ValueError naming the flag, never a silent True."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    shown = value if isinstance(value, str) else repr(value)
    raise ValueError(
        f"--{flag} {shown}: '{flag}' is a switch; write True or False (true/false, yes/no and 1/0 also work)"
    )


# Fire's own flags, valid anywhere (after `--` they belong to Fire; `--help` also works before it)
FIRE_FLAGS = frozenset({"help", "h", "interactive", "i", "separator", "completion", "trace", "t", "verbose", "v"})


HELP_FLAGS = ("--help", "-h")


def _takes_any_flag(function: Callable[..., Any]) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values())


def _before_separator(argv: Sequence[str]) -> list[str]:
    """The command's own arguments: everything after a bare `--` belongs to Fire."""
    return list(argv[: list(argv).index("--")] if "--" in argv else argv)


def unknown_flags(function: Callable[..., Any], argv: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The `--flags` in `argv` that `function` does not take, each with its closest valid spellings.

    Fire calls the function with the arguments it could use and only then complains about the rest, so a misspelt
    `--split_femr` would run the whole job without the option. Checked first, it stops the run before any work.
    `--flag=value`, `--flag-name` for `flag_name`, and `--noflag` for a switch are Fire's spellings and accepted;
    everything after a bare `--` belongs to Fire."""
    params = inspect.signature(function).parameters
    if _takes_any_flag(function):
        return []
    names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    found = []
    for token in _before_separator(argv):
        if not token.startswith("--") or len(token) == 2:
            continue
        flag = token[2:].split("=", 1)[0].replace("-", "_")
        if flag in names or flag in FIRE_FLAGS or (flag.startswith("no") and flag[2:] in names):
            continue
        found.append((token.split("=", 1)[0], difflib.get_close_matches(flag, names, n=2, cutoff=0.6)))
    return found


def run_command(
    component: Callable[..., Any] | Mapping[str, Callable[..., Any]],
    name: str,
    user_errors: tuple[type[BaseException], ...] = (),
    serialize: Callable[[Any], Any] | None = None,
) -> None:
    """`fire.Fire(component, name=name)` for the scripts' own commands, after checking the command line's flags
    against the function that will run (a dict of commands: the one named first): an unknown flag is an `error:`
    naming it and the nearest valid ones, exit code 2, before any work. Exceptions of the types in `user_errors`
    (the command's own input checks, e.g. DatasetError) end as one `error:` line, exit code 1, not a traceback."""
    import fire

    argv = sys.argv[1:]
    function = component
    if isinstance(component, Mapping):
        command = next((t for t in argv if not t.startswith("-")), None)
        function = component.get(command) if command is not None else None
    if callable(function):
        bad = unknown_flags(function, argv)
        if bad:
            shown = name if function is component else f"{name} {command}"
            listed = ", ".join(
                f"{flag} (did you mean {' or '.join('--' + m for m in near)}?)" if near else flag for flag, near in bad
            )
            print(f"error: {shown} has no option {listed}; see `python -m {shown} --help`", file=sys.stderr)
            raise SystemExit(2)
    command_line = None
    own = _before_separator(argv)
    if callable(function) and _takes_any_flag(function) and any(t in HELP_FLAGS for t in own):
        # Fire hands `--help` to a function with **kwargs as an option; after `--` it is Fire's own flag
        command_line = [t for t in own if t not in HELP_FLAGS] + ["--", "--help"]
    try:
        fire.Fire(component, command=command_line, name=name, **({"serialize": serialize} if serialize else {}))
    except user_errors as err:
        raise SystemExit(f"error: {err}") from None
