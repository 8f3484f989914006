"""What the ``lkd`` command says when a config or command line is refused: jsonargparse's nested messages cut down
to the option as the user wrote it and the class's own reason, on the last line."""

from __future__ import annotations

import re

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override


class ConfigError(ValueError):
    """A value of the config refused by the class it configures (the class's own message, last)."""


_UNION_FAILURE = "Does not validate against any of the Union subtypes"


_NOT_REASONS = ("Expected a <class 'NoneType'>", "Not a valid subclass of", "Expected a List", "Expected a <class 'list'>")
"""jsonargparse's lines about the Union's other members (None, "a list of callbacks"), never the class's own reason."""


def _items(body: str) -> list[str]:
    """The top-level ``- ...`` items of a jsonargparse "Errors:" block, each with its indented continuation lines."""
    lines = [line for line in body.splitlines() if line.strip()]
    starts = [len(line) - len(line.lstrip()) for line in lines if line.strip().startswith("- ")]
    if not starts:
        return []
    indent, items = min(starts), []
    for line in lines:
        if line.startswith(" " * indent + "- "):
            items.append(line.strip()[2:])
        elif items and len(line) - len(line.lstrip()) > indent:
            items[-1] += "\n" + line.strip()
    return items


def innermost_reason(message: str) -> str | None:
    """The class's own error out of jsonargparse's "Does not validate against any of the Union subtypes ...
    Given value: Namespace(...)" message (nested ones unwrapped), prefixed with the class it came from; None
    for any other message."""
    if _UNION_FAILURE not in message:
        return None
    body = message.split("Errors:", 1)[-1].split("Given value type:", 1)[0]
    reasons = [item for item in _items(body) if not item.startswith(_NOT_REASONS)]
    if not reasons:
        return None
    reason = "\n".join(reasons)
    if _UNION_FAILURE in reason:
        if inner := innermost_reason(reason):
            return inner
    where = re.search(r"class_path='([\w.]+)'", message)
    if where is None:
        return reason
    name = where.group(1).rsplit(".", 1)[-1]
    return f"{where.group(1)}: {reason.removeprefix(name + ': ')}"


PUBLIC_CLASSES = {"LightningModule": "lkd.modules", "LightningDataModule": "lkd.data", "Callback": "lkd.callbacks",
                  "Module": "lkd.models"}
"""Where lkd's own classes of each base live, for "did you mean" and the list of what is available."""


def _configurable(cls: type) -> bool:
    """A class a YAML ``class_path`` names: a network, LightningModule, data module or callback."""
    import lightning.pytorch as pl
    from torch import nn

    return issubclass(cls, (nn.Module, pl.LightningDataModule, pl.Callback))


def _buildable(module, names, keep) -> list[str]:
    """The classes of ``module`` among ``names`` that ``keep`` accepts, each once, by its own name (no aliases)."""
    return [n for n in names if n[:1].isupper() and isinstance(c := getattr(module, n, None), type) and c.__name__ == n and keep(c)]


def _within(names: list[str], width: int) -> str:
    """``names`` joined by commas, cut to about ``width`` characters with how many were left out."""
    shown = []
    for name in names:
        if shown and len(", ".join([*shown, name])) > width:
            return f"{', '.join(shown)} and {len(names) - len(shown)} more"
        shown.append(name)
    return ", ".join(shown)


def class_path_summary(message: str) -> str | None:
    """One line for a ``class_path`` that names no class of the expected kind: a typo (``lkd.modules.DistilModule``:
    did you mean ``lkd.modules.DistillModule``?), a module that does not exist, or a class of another kind
    (``torch.nn.Linear`` as the model), with lkd's classes of that kind. None for any other message."""
    import difflib
    import importlib

    keys = []
    for line in message.splitlines():
        if key := re.match(r'\s*Parser key "([^"]+)":', line):
            keys.append(key.group(1))
        elif "Problem with given class_path" in line:
            keys.append("init_args")
    given = re.search(r"NestedArg\(key='(?:[\w.]+\.)?class_path', val='([^']+)'\)", message)
    named = given or re.search(r"Got value: Namespace\(class_path='([^']+)'", message) or re.search(r"Import path ([\w.]+)", message)
    path = named.group(1) if named else None
    while keys and keys[-1] == "init_args":  # the class itself could not be loaded: its class_path is the option
        keys.pop()
    option = ".".join([*keys, "class_path"])
    option = f"--{option}" if given else option  # the command line, or the config file's key
    kind = re.search(r"does not correspond to a subclass of (\w+)", message)
    missing = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", message)
    no_module = re.search(r"No module named '([\w.]+)'", message)
    if kind:
        home = PUBLIC_CLASSES.get(kind.group(1))
        names = _buildable(importlib.import_module(home), getattr(importlib.import_module(home), "__all__", []),
                           lambda c: kind.group(1) in {b.__name__ for b in c.__mro__}) if home else []
        listed = f" lkd's: {_within([f'{home}.{n}' for n in names], 250)}." if names else ""
        return f"{option}={path}: not a {kind.group(1)}.{listed} HINT: name a {kind.group(1)} subclass"
    if missing:
        module, attr = missing.groups()
        try:
            names = [n for n in dir(importlib.import_module(module)) if not n.startswith("_")]
        except ImportError:
            names = []
        close = difflib.get_close_matches(attr, names, n=3, cutoff=0.6)
        guess = f" Did you mean {' or '.join(f'{module}.{c}' for c in close)}?" if close else ""
        public = _buildable(importlib.import_module(module), names, _configurable) if names else []
        listed = f"its classes: {_within(public, 200)}" if public else "check the spelling of the import path"
        return f"{option}={path or module + '.' + attr}: {module} has no {attr}.{guess} HINT: {listed}"
    if no_module:
        return f"{option}={path}: no module named {no_module.group(1)}. HINT: check the spelling (lkd's classes: lkd.modules.*, lkd.models.*, lkd.data.*, lkd.callbacks.*)"
    return None


def parse_error_summary(message: str) -> str | None:
    """One line out of jsonargparse's nested parse error ("Parser key "model": Does not validate ... Parser key
    "temperature": Expected a <class 'float'>. Got value: abc ... Given value: NestedArg(...)"): the option as a
    user writes it and the innermost complaint, e.g. ``--model.init_args.temperature: Expected a <class 'float'>.
    Got value: abc``. None when the message is not nested."""
    path, detail, listed = [], None, None
    for line in message.splitlines():
        text = line.strip()
        if key := re.match(r'Parser key "([^"]+)":', text):
            path.append(key.group(1))
            detail = listed = None
        elif "Problem with given class_path" in text:
            path.append("init_args")
        elif listed is None and text.startswith("- Expected") and "NoneType" not in text:
            listed = text[2:]
        elif detail is None and path and text and not text.startswith(("Does not validate", "Subtypes:", "Errors:", "- ", "Given value")):
            detail = text
    detail = detail or listed
    if not path or detail is None or "Given value" not in message:
        return None
    given = re.search(r"^\s*Given value: (.*)$", message, re.MULTILINE)
    if "Got value" not in detail and given and not given.group(1).startswith(("NestedArg", "Namespace")):
        detail = f"{detail.rstrip('.')}. Got value: {given.group(1)}"
    dotted = ".".join(path)
    return f"--{dotted}: {detail}"


class LKDArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors end on the line that matters: the option and what was wrong with it
    (jsonargparse ends a nested type error with a dump of the given value)."""

    @override
    def error(self, message: str, ex: Exception | None = None):
        summary = class_path_summary(message) or parse_error_summary(message)
        if summary is not None:
            words = self.prog.replace(" [options]", "").split()
            command = " ".join(["lkd", *words[1:]])  # the subcommand's parser is "<prog> [options] fit"
            hint = "" if "HINT:" in summary else f". HINT: `{command} --help` lists every option with its type"
            message = f"{message}\n{summary}{hint}"
        return super().error(message, ex)
