import json

import pytest
import torch
from safetensors.torch import save_file

from srpo_cli.errors import RuntimeFailure
from srpo_cli.train.checkpoint import load_checkpoint, save_checkpoint, sha256_file


def _save(path, step=5):
    sd = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    save_checkpoint(
        path,
        "critic",
        {"q": sd},
        config={"a": 1},
        dataset_id="x/y-v0",
        obs_dim=3,
        action_dim=1,
        step=step,
        seed=7,
        parents={"p.safetensors": "abc"},
        extra={"ref_min_score": 1.5},
    )
    return sd


def test_round_trip(tmp_path):
    path = tmp_path / "c.safetensors"
    sd = _save(path)
    ck = load_checkpoint(path, "critic")
    assert torch.equal(ck.section("q")["w"], sd["w"])
    assert ck.meta["stage"] == "critic" and ck.meta["step"] == 5 and ck.meta["seed"] == 7
    assert ck.meta["obs_dim"] == 3 and ck.meta["dataset_id"] == "x/y-v0"
    assert ck.config == {"a": 1} and ck.meta["parents"] == {"p.safetensors": "abc"}
    assert ck.meta["extra"]["ref_min_score"] == 1.5
    assert ck.meta["torch_version"] == torch.__version__


def test_missing_truncated_corrupt_foreign_and_wrong_stage(tmp_path):
    with pytest.raises(RuntimeFailure, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors", "actor")
    path = tmp_path / "c.safetensors"
    _save(path)
    data = path.read_bytes()
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeFailure, match="truncated or corrupt"):
        load_checkpoint(trunc)
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeFailure, match="truncated or corrupt"):
        load_checkpoint(junk)
    foreign = tmp_path / "f.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign), metadata={"hello": "world"})
    with pytest.raises(RuntimeFailure, match="not an srpo"):
        load_checkpoint(foreign)
    with pytest.raises(RuntimeFailure, match="expected a 'actor' checkpoint"):
        load_checkpoint(path, "actor")


def test_interrupted_write_keeps_the_last_good_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    _save(path, step=1)
    before = sha256_file(path)
    import srpo_cli.train.checkpoint as ck

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        _save(path, step=2)
    assert sha256_file(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind
    assert json.loads(json.dumps(load_checkpoint(path).meta["step"])) == 1
