import argparse
import os
import stat

import pytest
import torch

from lowssl.io import CheckpointError, atomic_torch_save, load_checkpoint, sha256_file


def test_atomic_save_loads_weights_only(tmp_path):
    path = atomic_torch_save(
        {"state_dict": {"w": torch.ones(2)}, "epoch": 3, "config": {"a": [1, 2]}},
        tmp_path / "ckpt" / "last.pth",
    )
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert len(sha256_file(path)) == 64


def test_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_torch_save({"epoch": 1}, tmp_path / "last.pth")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_untrusted_objects_need_explicit_trust(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path)
    assert load_checkpoint(path, safe_globals=[argparse.Namespace])["args"].lr == 0.1
    assert load_checkpoint(path, trust=True)["args"].lr == 0.1


def test_truncated_and_missing_files_are_named(tmp_path):
    path = atomic_torch_save({"w": torch.zeros(1000)}, tmp_path / "full.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.pth is corrupt or truncated"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask, mode):
    """A checkpoint is readable by whom the umask lets read a new file (a lab's group under 002), as
    torch.save(obj, path) would leave it: not the 0600 of a temp file."""
    previous = os.umask(umask)
    try:
        written = atomic_torch_save({"epoch": 1}, tmp_path / "last.pth")
        atomic_torch_save({"epoch": 2}, written)  # replacing a file: the new one's mode again
        with open(tmp_path / "by-open.pth", "wb"):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "by-open.pth").stat().st_mode) == mode
    assert load_checkpoint(written)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["by-open.pth", "last.pth"], "no temp file left"
