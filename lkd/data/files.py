"""Local CSV / TSV, JSON Lines and parquet files as the splits of a ``datasets.DatasetDict``."""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from lkd.data.errors import TextDataError
from lkd.hub import DataFileError

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
"""The file endings read, and the ``datasets`` builder that reads each."""


def data_file_paths(data_files: str | list[str] | dict[str, str | list[str]]) -> dict[str, list[Path]]:
    """``{split: [files]}`` of a ``data_files`` argument: a dict names the splits; a file or list of files is ``train``."""
    files = data_files if isinstance(data_files, dict) else {"train": data_files}
    return {split: [Path(p).expanduser() for p in ([f] if isinstance(f, (str, Path)) else f)] for split, f in files.items()}


def _one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load_data_files(data_files: str | list[str] | dict[str, str | list[str]]) -> datasets.DatasetDict:
    """Local CSV (``.csv``, ``.tsv``), JSON Lines (``.json``, ``.jsonl``) or parquet files as a DatasetDict: a
    dict names the splits (``{train: a.csv, validation: b.csv}``); a file or list of files is the ``train`` split.

    Each split is read on its own, so a split may lack columns the others have (a test file without labels, to
    predict); the module checks every split's columns against what it needs
    (:meth:`lkd.data.TextClassificationDataModule.setup`).
    """
    paths = data_file_paths(data_files)
    flat = [p for ps in paths.values() for p in ps]
    if missing := [str(p) for p in flat if not p.is_file()]:
        if isinstance(data_files, str) and re.match(r"\s*\{|(train|validation|test)\w*:\S", data_files):
            raise FileNotFoundError(
                f"data.init_args.data_files={data_files!r} was read as one file name, not as splits: YAML reads "
                "`{train: a.csv}` as a mapping only with a space after each colon, and an unquoted {a,b} on a bash "
                "command line becomes two options (the last one wins). HINT: quote it, with spaces: "
                "--data.init_args.data_files='{train: reviews.csv, validation: dev.csv}'")
        raise FileNotFoundError(f"data_files: no such file {', '.join(missing)} (working directory {Path.cwd()}). "
                                "HINT: fix the path in data.init_args.data_files (relative paths start at the working directory)")
    formats = {FILE_FORMATS.get(p.suffix.lower()) for p in flat}
    if None in formats or len(formats) != 1:
        raise TextDataError(
            f"data_files {[str(p) for p in flat]}: one format per data set, named by the file ending; "
            f"known endings: {', '.join(FILE_FORMATS)}"
        )
    kwargs = {"delimiter": "\t"} if all(p.suffix.lower() == ".tsv" for p in flat) else {}
    file_format = formats.pop()
    splits = {}
    for split, files in paths.items():
        shown = ", ".join(str(p) for p in files)
        try:
            splits[split] = datasets.load_dataset(file_format, data_files={split: [str(p.resolve()) for p in files]}, **kwargs)[split]
        except datasets.exceptions.DatasetGenerationError as err:
            cause = err.__cause__ or err.__context__ or err
            if isinstance(err, datasets.exceptions.DatasetGenerationCastError):  # files of one split with other columns
                raise TextDataError(f"data_files of split {split!r} ({shown}) do not all have the same columns: {_one_line(err)}. "
                                    "HINT: give every file of a split the same columns") from err
            raise DataFileError(f"reading data_files {shown} (split {split!r}) failed: {type(cause).__name__}: {_one_line(cause)}. "
                                "HINT: check that the file is complete and in the format its ending says") from err
        except ValueError as err:  # datasets: 'Instruction "validation" corresponds to no data!' for a file without rows
            if re.search(r"Instruction \W?(\w+)\W? corresponds to no data", str(err)) is None:
                raise
            raise TextDataError(f"data_files: split {split!r} is empty ({shown} has no rows). "
                                "HINT: give it rows, or leave it out and carve it from train (validation_size / test_size)") from err
    return datasets.DatasetDict(splits)
