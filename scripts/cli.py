"""Command-line values that Python Fire hands over as they were typed, checked before they can do harm.

Fire reads `--overwrite False` as the bool False, but `--overwrite false` (lowercase) as the text 'false', and any
non-empty text counts as True in Python: without a check, `--overwrite false` overwrites. `as_bool` is applied to
every bool parameter of the scripts' own Fire entry points (quantify, phantom, export). Bundle configs run with
`python -m monai.bundle run` are checked by `scripts.overrides` instead.
"""

from __future__ import annotations

__all__ = ["TRUE_WORDS", "FALSE_WORDS", "as_bool"]

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
