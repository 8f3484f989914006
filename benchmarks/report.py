"""Writing benchmark results into BENCHMARKS.md: one `##` section per benchmark, replaced in place."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# lkd benchmarks\n\nEvery number below was written by the script named in its section; rerun the command to reproduce it.\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{gpu}, Python {platform.python_version()}"
    )


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section ``## title`` of BENCHMARKS.md with ``body``."""
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


def write_subsection(title: str, subtitle: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) ``### subtitle`` inside the section ``## title``, keeping its other subsections
    (one section, several scripts: e.g. the MNIST and the language-model teacher caches)."""
    text = path.read_text() if path.exists() else HEADER
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    current = match.group(1) if match else ""
    parts = dict(re.findall(r"^### (.+?)\n(.*?)(?=^### |\Z)", current, re.S | re.M))
    parts[subtitle] = body.strip() + "\n\n"
    write_section(title, "\n".join(f"### {name}\n\n{content.strip()}\n" for name, content in parts.items()), path)
