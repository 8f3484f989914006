from pathlib import Path

import pytest

from lkd.data.resolve import DatasetNotFoundError, load_hub_dataset, resolve_dataset_path


def test_mirror_found_by_name(tiny_mnist, monkeypatch):
    monkeypatch.setenv("LKD_DATA_DIR", str(tiny_mnist.parent))
    assert resolve_dataset_path("ylecun/mnist") == str(tiny_mnist)
    ds = load_hub_dataset("ylecun/mnist", "mnist")
    assert ds["train"].num_rows == 600 and ds["test"].num_rows == 200


def test_mirror_found_by_owner_and_name(tmp_path, tiny_mnist, monkeypatch):
    (tmp_path / "ylecun").mkdir()
    (tmp_path / "ylecun" / "mnist").symlink_to(tiny_mnist, target_is_directory=True)
    monkeypatch.setenv("LKD_DATA_DIR", str(tmp_path))
    assert Path(resolve_dataset_path("ylecun/mnist")) == tmp_path / "ylecun" / "mnist"


def test_local_folder_is_used_directly(tiny_mnist):
    assert resolve_dataset_path(str(tiny_mnist)) == str(tiny_mnist.resolve())


def test_missing_mirror_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("LKD_DATA_DIR", str(tmp_path))
    assert resolve_dataset_path("someone/nothing") == "someone/nothing"
    with pytest.raises(DatasetNotFoundError) as err:
        load_hub_dataset("someone/nothing", "default")
    message = str(err.value)
    assert "'someone/nothing'" in message and str(tmp_path / "nothing") in message
    assert "LKD_DATA_DIR" in message and "HINT" in message


def test_default_data_dir_is_shared_beside_the_repo(monkeypatch):
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip("no ../shared/data mirror on this machine")
    monkeypatch.delenv("LKD_DATA_DIR", raising=False)
    assert Path(resolve_dataset_path("ylecun/mnist")) == (SHARED_DATA / "mnist").resolve()
