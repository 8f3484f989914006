"""Copy the last TensorBoard image of a tag out of a run's event files into a PNG (for the README).

    python benchmarks/export_figures.py LOGDIR TAG OUT.png     # e.g. a run of benchmarks/glue.py

The images are the figures lkd's callbacks logged (lkd.figures), byte for byte.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def last_image(log_dir: Path, tag: str) -> bytes:
    for folder in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"images": 0})
        acc.Reload()
        if tag in acc.Tags()["images"]:
            return acc.Images(tag)[-1].encoded_image_string
    raise SystemExit(f"no image {tag!r} under {log_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("tag")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(last_image(args.log_dir, args.tag))
    print(f"{args.tag} -> {args.out}")


if __name__ == "__main__":
    main()
