"""Command-line overrides that MONAI's runner accepts silently, stopped with one clear paragraph.

`python -m monai.bundle run --config_file ... --key value` hands every `--key value` to the config: a misspelt key
(`--max_epoch 3`) is added as a new, unused entry, so the run trains for the default 50 epochs without a word;
`--batch_size abc` reaches the config as text and fails much later inside an expression; and Python Fire reads a
lowercase `false` as the text 'false', which Python treats as True, so `--overwrite false` would overwrite.

`check_overrides` runs first in each config's `initialize`. It reads the flags the way Fire does from `sys.argv`
(MONAI hands the overrides to the workflow, not to the config), and compares them with the config files as written:
the key must exist (a nested `a#b` key may also name an argument of the `_target_` at `a`), and the value must have
the type of the default. It does nothing when the process is not `monai.bundle run` (MONAI Label, tests, a workflow
built in Python), so it never judges flags that were not meant for the bundle.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RUNNER_COMMANDS", "VALUE_RULES", "runner_arguments", "parse_cli", "override_problem", "check_overrides"]

RUNNER_COMMANDS = ("run", "run_workflow")
EXPRESSION_PREFIXES = ("$", "@", "%")
FLAG = re.compile(r"^(--|-[a-zA-Z])")  # Fire's flags: not a negative number such as -1
# keys whose default is an expression that picks a value per machine, but which users set to a plain value: checked
# against a value of the type they take
TYPED_EXPRESSION_KEYS: dict[str, Any] = {
    "num_workers": 0,
    "sw_batch_size": 0,
    "pin_memory": False,
    "compile_kwargs": {},
    "eval_split": "",
}


def _at_least(low: float, what: str = "a whole number") -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"takes {what} of at least {low}"


def _label_preset(value: Any) -> str | None:
    from scripts.labels import PRESETS

    return None if value in PRESETS else f"is one of {', '.join(sorted(PRESETS))}"


def _laterality(value: Any) -> str | None:
    return None if str(value).lower() in ("auto", "left", "right") else "is auto, left or right"


def _percentiles(value: Any) -> str | None:
    ok = len(value) == 2 and all(isinstance(x, (int, float)) for x in value) and 0 <= value[0] < value[1] <= 100
    return None if ok else "takes [low, high] percentiles with 0 <= low < high <= 100"


def _inplane_spacing(value: Any) -> str | None:
    return None if value > 0 or value == -1 else "takes a spacing in mm above 0, or -1 to keep each scan's own"


def _cache_rate(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "takes a fraction from 0 to 1"


def _agreement_measures(value: Any) -> str | None:
    from scripts.agreement.report import MEASURE_COLUMNS

    ok = isinstance(value, (list, tuple)) and value and all(m in MEASURE_COLUMNS for m in value)
    return None if ok else f"takes a list of measurement columns among {', '.join(MEASURE_COLUMNS)}"


def _cpu_runtime(value: Any) -> str | None:
    from scripts.onnx_runtime import RUNTIMES

    return None if str(value).lower() in RUNTIMES else "is auto, torch or onnxruntime"


def _device(value: Any) -> str | None:
    import torch

    text = str(value)
    if text.startswith(EXPRESSION_PREFIXES) or "cuda" not in text or torch.cuda.is_available():
        return None
    return "names a CUDA device, but torch finds no usable GPU here (a CPU-only torch build, or no driver); use cpu"


# values that have the right type but cannot work: checked after the type, for top-level keys only, so a run stops
# with this sentence instead of an exception from deep inside ignite, a transform or a division by zero
VALUE_RULES: dict[str, Callable[[Any], str | None]] = {
    "max_epochs": _at_least(1),
    "stop_after_epoch": _at_least(0),
    "time_limit": _at_least(0, "a number of seconds"),
    "batch_size": _at_least(1),
    "slices_per_epoch": _at_least(1),
    "slices_per_volume": _at_least(1),
    "val_interval": _at_least(1),
    "max_indices_per_class": _at_least(1),
    "num_workers": _at_least(0),
    "sw_batch_size": _at_least(1),
    "min_component_mm3": _at_least(0, "a volume in mm^3"),
    "eval_split": lambda v: None if v in ("training", "validation", "test") else "is training, validation or test",
    "learning_rate": lambda v: None if v > 0 else "takes a number above 0",
    "cache_rate": _cache_rate,
    "label_preset": _label_preset,
    "laterality": _laterality,
    "cpu_runtime": _cpu_runtime,
    "intensity_percentiles": _percentiles,
    "inplane_spacing": _inplane_spacing,
    "agreement_measures": _agreement_measures,
    "device": _device,
}


def _value_problem(flag: str, raw: str, value: Any) -> str | None:
    """A message if a well-typed top-level `value` is outside what `flag` can take (VALUE_RULES)."""
    rule = VALUE_RULES.get(flag)
    if rule is None or (isinstance(value, str) and value.startswith(EXPRESSION_PREFIXES)):
        return None
    try:
        problem = rule(value)
    except TypeError:
        return None  # a type the rule does not know: the type check has spoken already
    return None if problem is None else f"{_shown(flag, raw)}: '{flag}' {problem}"


def runner_arguments() -> frozenset[str]:
    """Names that `monai.bundle run`/`run_workflow` and ConfigWorkflow take themselves (not config ids)."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run, run_workflow

    names = {"workflow_name", "workflow_type", "properties_path"}
    for fn in (run, run_workflow, create_workflow, ConfigWorkflow.__init__):
        for p in inspect.signature(fn).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self":
                names.add(p.name)
    return frozenset(names)


def parse_cli(argv: Sequence[str]) -> dict[str, tuple[str, Any]] | None:
    """`{key: (raw text, value as Fire parses it)}` of the flags of a `python -m monai.bundle run ...` command line,
    or None when `argv` is another program's."""
    from fire.parser import DefaultParseValue

    if len(argv) < 2 or not Path(argv[0]).as_posix().endswith("monai/bundle/__main__.py"):
        return None
    if argv[1] not in RUNNER_COMMANDS:
        return None
    tokens = list(argv[2:])
    if "--" in tokens:  # Fire's own flags (--help, --trace) follow a lone "--"
        tokens = tokens[: tokens.index("--")]
    flags: dict[str, tuple[str, Any]] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not FLAG.match(token):
            continue  # a positional argument (run_id)
        key, sep, raw = token.lstrip("-").partition("=")
        if not sep:
            if i < len(tokens) and not FLAG.match(tokens[i]):
                raw, i = tokens[i], i + 1
            else:
                flags[key.replace("-", "_")] = ("", True)  # a bare --flag is True, as in Fire
                continue
        flags[key.replace("-", "_")] = (raw, DefaultParseValue(raw))
    return flags


def _tracking_keys(tracking: Any) -> set[str]:
    """Top-level ids that `--tracking` settings add to the config (e.g. experiment_name, tracking_uri for mlflow)."""
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    try:
        settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else None
        if settings is None:
            settings = tracking if isinstance(tracking, Mapping) else ConfigParser.load_config_files(tracking)
        return set(settings.get("configs", {}))
    except Exception:  # noqa: BLE001 - MONAI reports a bad tracking setting itself
        return set()


def _shown(flag: str, raw: str) -> str:
    return f"--{flag} {raw}".rstrip()


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value!r}"
    return f"{type(value).__name__} {value!r}"


def _type_problem(flag: str, raw: str, default: Any, value: Any, shown_default: str | None = None) -> str | None:
    """A message if `value` does not have the type of the config's literal `default`."""
    if default is None or (isinstance(value, str) and value.startswith(EXPRESSION_PREFIXES)):
        return None
    if isinstance(default, str) and default.startswith(EXPRESSION_PREFIXES):
        if flag not in TYPED_EXPRESSION_KEYS:
            return None  # an expression or reference: its type is only known when it runs
        return _type_problem(flag, raw, TYPED_EXPRESSION_KEYS[flag], value, "default: set per machine")
    shown = _shown(flag, raw)
    shown_default = shown_default or f"default {default}"
    if isinstance(default, bool):
        if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
            return None
        if isinstance(value, str) and value.lower() == "true":
            return None  # the text 'true' counts as True
        hint = " (Fire passes a lowercase false as the text 'false', which Python counts as True)" * (
            isinstance(value, str) and value.lower() == "false"
        )
        return f"{shown}: '{flag}' is a switch ({shown_default}); write True or False{hint}"
    if isinstance(default, int):
        if type(value) is int:
            return None
        return f"{shown}: '{flag}' takes a whole number ({shown_default}), got {_kind(value)}"
    if isinstance(default, float):
        if type(value) in (int, float):
            return None
        return f"{shown}: '{flag}' takes a number ({shown_default}), got {_kind(value)}"
    if isinstance(default, str):
        if isinstance(value, str):
            return None
        return f"{shown}: '{flag}' takes text (default {default!r}), got {_kind(value)}"
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return None
        return f"{shown}: '{flag}' takes a list such as {list(default)!r}, got {_kind(value)}"
    if isinstance(default, Mapping) and not isinstance(value, Mapping):
        return f"{shown}: '{flag}' takes a section (a dict), got {_kind(value)}"
    return None


def _argument_problem(flag: str, raw: str, target: Any, name: str, value: Any) -> str | None:
    """A nested key that the config does not list must be an argument of the component's `_target_`."""
    if name.startswith("_"):
        return None  # _disabled_, _requires_, _mode_, _desc_
    try:
        from monai.bundle.config_item import ConfigComponent
        from monai.utils import optional_import

        module, _, attr = ConfigComponent({"_target_": target}).resolve_module_name().rpartition(".")
        obj, found = optional_import(module, name=attr)
        params = inspect.signature(obj).parameters if found else None
    except Exception:  # noqa: BLE001 - a target we cannot inspect is not ours to judge
        params = None
    if params is None or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    if name not in params:
        close = difflib.get_close_matches(name, list(params), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; it takes {', '.join(list(params)[:12])}"
        return f"{_shown(flag, raw)}: {target} has no argument '{name}'{hint}"
    default = params[name].default
    return None if default is inspect.Parameter.empty else _type_problem(flag, raw, default, value)


def override_problem(config: Mapping[str, Any], flag: str, raw: str, value: Any, extra: set[str]) -> str | None:
    """The problem with one override `--flag raw` against the merged config files (None if it fits).

    Args:
        config: the config as the files define it, before any override.
        flag: the override key (`a#b#c`, or MONAI's `a::b::c`).
        raw: the value as typed (for the message).
        value: the value as Fire parsed it.
        extra: top-level ids that other runner options add (tracking settings).
    """
    parts = [p for p in re.split(r"#|::", flag.lstrip("+")) if p]
    node: Any = config
    for depth, part in enumerate(parts):
        here = "#".join(parts[:depth])
        last = depth == len(parts) - 1
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            if depth == 0:
                if part in extra:
                    return None
                close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                return (
                    f"{_shown(flag, raw)}: the config has no key '{part}'{hint}; a misspelt key would be added as a "
                    "new, unused entry and silently ignored"
                )
            if "_target_" in node and last:
                return _argument_problem(flag, raw, node["_target_"], part, value)
            return None  # a new entry in a plain section (e.g. one more metric): allowed
        if isinstance(node, list):
            if part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                node = node[int(part)]
                continue
            return f"{_shown(flag, raw)}: '{here}' is a list of {len(node)} items; '{part}' is not an index of it"
        return f"{_shown(flag, raw)}: '{here}' is a value ({node!r}), not a section with keys"
    return _type_problem(flag, raw, node, value) or (_value_problem(flag, raw, value) if len(parts) == 1 else None)


def check_overrides(argv: Sequence[str] | None = None) -> bool:
    """Stop a `monai.bundle run` whose command-line overrides name keys the config lacks or values of the wrong type,
    with one paragraph listing every bad flag; True otherwise (so it can sit in `initialize`).

    Args:
        argv: the command line; `sys.argv` by default.
    """
    from monai.bundle import ConfigParser

    flags = parse_cli(sys.argv if argv is None else argv)
    if not flags:
        return True
    runner = runner_arguments()
    options = {k: v for k, (_, v) in flags.items() if k in runner}
    if isinstance(options.get("args_file"), str):
        try:
            for key, value in ConfigParser.load_config_file(options["args_file"]).items():
                if key in runner:
                    options.setdefault(key, value)
                else:
                    flags.setdefault(key, (str(value), value))
        except Exception:  # noqa: BLE001 - MONAI reports an unreadable args_file itself
            return True
    if options.get("config_file") is None:
        return True
    try:
        config = ConfigParser.load_config_files(options["config_file"])
    except Exception:  # noqa: BLE001 - MONAI has read these files already; if we cannot, we have nothing to add
        return True
    extra = _tracking_keys(options["tracking"]) if options.get("tracking") else set()
    problems = [
        problem
        for key, (raw, value) in flags.items()
        if key not in runner and (problem := override_problem(config, key, raw, value, extra))
    ]
    if problems:
        files = options["config_file"]
        files = ", ".join(map(str, files)) if isinstance(files, (list, tuple)) else str(files)
        raise SystemExit(
            f"error: {len(problems)} command-line override(s) do not fit the config ({files}):\n  "
            + "\n  ".join(problems)
            + "\nOverrides are --key value for keys of the config (nested keys as --a#b value); switches take True "
            "or False."
        )
    return True
