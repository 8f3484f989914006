"""GLUE as a preset of :class:`lkd.data.TextClassificationDataModule`: the data set ``nyu-mll/glue`` (resolved
to its offline mirror), a task = its config, scored on ``validation`` (GLUE hides its test labels).

Everything else (columns and labels read from the features, dynamic padding, cached tokenisation, the
teacher-cache contract) is the general module's. ``data_files`` swaps GLUE for local files with the same
config, so a GLUE YAML runs on a CSV by overrides alone::

    lkd fit -c configs/glue/student_kd.yaml --data.init_args.data_files='{train: train.csv, validation: dev.csv}' \
        --data.init_args.text_columns=[review] --data.init_args.label_column=stars --data.init_args.task=reviews
"""

from __future__ import annotations

from pathlib import Path

import datasets

from lkd.data.text_classification import ProblemType, TextClassificationDataModule
from lkd.data.transfer import TransferTexts, TransferWords
from lkd.hub import resolve_dataset_path

__all__ = ["GLUEDataModule"]


class GLUEDataModule(TextClassificationDataModule):
    """A GLUE task (or any GLUE-shaped data set or local files) with GLUE's defaults.

    Batches as :class:`~lkd.data.TextClassificationDataModule`'s; ``idx`` is GLUE's example index.

    Args:
        task: a config of ``hub_id`` (GLUE: ``sst2``, ``mrpc``, ``rte``, ``cola``, ``stsb``, ...); it also picks the
            metrics. With ``data_files``, just the task's name.
        hub_id: data set id, resolved to a local mirror when there is one (:mod:`lkd.hub`); unused with ``data_files``.
        data_files: local csv/json/parquet files instead of ``hub_id`` (``{split: path}``).
        test_split: split that ``lkd test`` scores; default ``validation`` (the dev score everyone reports).
        predict_split: split that ``lkd predict`` writes; default ``test`` (GLUE's, without labels: the submission).
        problem_type: None (default) for a GLUE task's own (``stsb`` regression, the others classification); with
            ``data_files`` and a task name of your own, ``classification`` or ``regression`` overrides what the label
            type says.
        validation_size, test_size: with ``data_files``, carve a missing validation / test split from train.
        The rest: as :class:`~lkd.data.TextClassificationDataModule`.
    """

    def __init__(
        self,
        task: str = "sst2",
        hub_id: str = "nyu-mll/glue",
        tokenizer: str | None = None,
        *,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        train_size: int | None = None,
        labelled_size: int | None = None,
        test_split: str = "validation",
        predict_split: str = "test",
        text_columns: list[str] | None = None,
        label_column: str | None = None,
        label_names: list[str] | None = None,
        problem_type: ProblemType | None = None,
        validation_size: float | int | None = None,
        test_size: float | int | None = None,
        transfer_copies: int = 0,
        transfer_word_prob: float = 0.3,
        transfer_words: TransferWords = "frequency",
        transfer_texts: TransferTexts | None = None,
        group_by_length: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ):
        if data_files is not None and hub_id != "nyu-mll/glue":
            raise ValueError(f"GLUEDataModule: give hub_id ({hub_id!r}) or data_files ({data_files!r}), not both")
        super().__init__(None if data_files is not None else hub_id, None if data_files is not None else task, data_files,
                         tokenizer, task=task, text_columns=text_columns, label_column=label_column, label_names=label_names,
                         problem_type=problem_type, test_split=test_split, predict_split=predict_split,
                         validation_size=validation_size, test_size=test_size,
                         max_length=max_length, batch_size=batch_size, eval_batch_size=eval_batch_size, train_size=train_size,
                         labelled_size=labelled_size, transfer_copies=transfer_copies, transfer_word_prob=transfer_word_prob,
                         transfer_words=transfer_words, transfer_texts=transfer_texts,
                         group_by_length=group_by_length, seed=seed, num_workers=num_workers)
        self.hub_id = hub_id if data_files is None else None
        if data_files is None:
            self._check_task()

    def _check_task(self) -> None:
        path = resolve_dataset_path(self.hub_id)
        try:
            available = datasets.get_dataset_config_names(path)
        except Exception:  # noqa: BLE001 - offline hub or no config list: load_hub_dataset reports it later
            return
        if available and self.task not in available:
            folder = Path(path)
            parent_configs = _config_names(folder.parent) if folder.is_dir() else []
            if self.task in parent_configs or folder.name == self.task:  # the task's own folder given as the data set
                raise ValueError(
                    f"hub_id {self.hub_id!r} is the folder of one task ({folder.name}), not the data set: its only config is "
                    f"{', '.join(sorted(available))}. HINT: set data.init_args.hub_id to {str(folder.parent)!r} (or the hub id, "
                    f"e.g. nyu-mll/glue) and data.init_args.task to {self.task!r}"
                )
            raise ValueError(
                f"unknown task {self.task!r} for {self.hub_id} ({path}); available configs: {', '.join(sorted(available))}. "
                "HINT: set data.init_args.task to one of them"
            )


def _config_names(folder: Path) -> list[str]:
    """Config names of a hub-layout folder (its README's ``configs:``), [] when it is not one."""
    if not (folder / "README.md").is_file():
        return []
    try:
        return list(datasets.get_dataset_config_names(str(folder)))
    except Exception:  # noqa: BLE001 - not a data set folder
        return []
