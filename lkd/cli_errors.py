"""What the ``lkd`` command says when a config or command line is refused: jsonargparse's nested messages cut down
to the option as the user wrote it and the class's own reason, on the last line."""

from __future__ import annotations

import re

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override


class ConfigError(ValueError):
    """A value of the config refused by the class it configures (the class's own message, last)."""


_UNION_FAILURE = "Does not validate against any of the Union subtypes"


def innermost_reason(message: str) -> str | None:
    """The class's own error out of jsonargparse's "Does not validate against any of the Union subtypes ...
    Given value: Namespace(...)" message (nested ones unwrapped), prefixed with the class it came from; None
    for any other message."""
    if _UNION_FAILURE not in message:
        return None
    where = re.search(r"class_path='([\w.]+)'", message)
    body = message.split("Errors:", 1)[-1].split("Given value type:", 1)[0]
    reasons = [line.strip()[2:] for line in body.splitlines() if line.strip().startswith("- ")
               and not line.strip().startswith("- Expected a <class 'NoneType'>")]
    if not reasons:
        return None
    reason = "\n".join(reasons)
    inner = innermost_reason(reason) if _UNION_FAILURE in reason else None
    return inner or (f"{where.group(1)}: {reason}" if where else reason)


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
        summary = parse_error_summary(message)
        if summary is not None:
            words = self.prog.replace(" [options]", "").split()
            command = " ".join(["lkd", *words[1:]])  # the subcommand's parser is "<prog> [options] fit"
            message = f"{message}\n{summary}. HINT: `{command} --help` lists every option with its type"
        return super().error(message, ex)
