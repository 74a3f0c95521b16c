"""Every entry of lowssl/released.yaml as a new user meets it: a synthetic file in the layout its upstream
project saves, read by ``evaluate inspect`` with trust off, gives the registered format, branch and
architecture, no backbone key missing, and needs no trust. A new registry entry is tested as soon as it
is added (its format must have a layout in ``UPSTREAM_LAYOUTS``).

The files are written by tests/test_adapters.py's writers (one per format), with the upstream details
that matter to a weights-only reader added here: SSLight's config an fvcore CfgNode, SEED's small-patch
queue. Backbone tensors are one value expanded to each shape (a file of a few KB: a layout is names and
shapes): 1 in the network the entry evaluates, 7 (test_adapters' decoy) in the others, so reading the
wrong branch shows in the values.

Print the registry table (docs/released.md) on these files:
``.venv/bin/python -m pytest -q -rP tests/test_registry_layouts.py -k table_reports``.
"""

from __future__ import annotations

import argparse
import json
import types
from functools import cache

import pytest
import torch
from fvcore.common.config import CfgNode as FvcoreCfgNode

from lowssl import released
from lowssl.backbones import build_backbone
from lowssl.checkpoints import open_from_arguments
from lowssl.evaluate import inspect_cmd
from tests.test_adapters import VIT, WRITERS, save, write_compress, write_seed, write_sslight

# Where each format's layout comes from: the saving code of its repository (owner/repo@commit:path, the
# copy read for this test), or, where no saving code writes the released file, what reads it.
UPSTREAM_LAYOUTS = {
    "sslight": "saic-fi/SSLight@557e54a:src/sslight/engine/trainer.py, Trainer.save_checkpoint: config "
    "(an fvcore CfgNode, saic-fi/SSLight@0934b88:src/config/defaults.py), epoch, steps, state_dict of the "
    "DDP model, optimizer, loss (DINO only)",
    "simreg": "UCDvision/simreg@43fb804:main.py: opt (argparse.Namespace), state_dict of the SimReg "
    "module (encoder_q.module.*, predict_q.*, encoder_t.*), optimizer, epoch",
    "compress": "UMBCvision/CompRess@cf33bab:train_student.py: opt (argparse.Namespace), model (the "
    "DataParallel student, module.*; fc replaced by an empty Sequential), optimizer, epoch",
    "seed": "jacobswan1/SEED@81ff933:main_small-patch.py, save_checkpoint: epoch, arch, state_dict of the "
    "DDP SEED model (seed/small_patch_builder.py: student, teacher, queue, small_queue, queue_ptr), "
    "optimizer",
    "disco": "Yuting-Gao/DisCo-pytorch@35da4b3:DisCo/main.py, save_checkpoint: epoch, arch, state_dict of "
    "the DDP MoCo builder (encoder_q, encoder_k, teacher_encoder_q/k, queue), optimizer",
    # Assumed, not re-read for this test: the layouts docs/checkpoints.md describes.
    "dino-full": "assumed: facebookresearch/dino@cc72fe9:main_dino.py save_dict (student, teacher, "
    "optimizer, epoch, args, dino_loss), as docs/checkpoints.md describes it",
    "dino-backbone": "assumed: the teacher backbone's state dict under torchvision / timm names, as the "
    "facebookresearch/dino README's 'backbone only' files are described in docs/checkpoints.md (no saving "
    "code for them is in the repository)",
    "moco": "assumed: facebookresearch/moco@3b42c2a:main_moco.py save_checkpoint (epoch, arch, "
    "state_dict, optimizer), as docs/checkpoints.md describes it",
    "swav": "assumed: a flat state dict under module.*, as facebookresearch/swav@9a2dc80:hubconf.py reads "
    "the released files (docs/checkpoints.md)",
}

ENTRIES = list(released.registry().values())
EVALUATED, OTHER = 1, 7  # the value of every backbone tensor of the evaluated network / of the others


@cache
def expanded_backbone(arch: str) -> dict[str, torch.Tensor]:
    """``arch``'s state-dict names, shapes and dtypes, every tensor the value EVALUATED (built on the meta
    device: a ResNet50 costs no memory; the saved file keeps one element per tensor)."""
    with torch.device("meta"):
        state = build_backbone(arch).state_dict()
    return {
        key: torch.full((), EVALUATED, dtype=value.dtype).expand(value.shape) for key, value in state.items()
    }


def sslight_config(entry: released.Released) -> FvcoreCfgNode:
    """The part of SSLight's config that its checkpoints carry and lowssl reads, as its trainer saves it:
    an fvcore CfgNode (saic-fi/SSLight@0934b88:src/config/defaults.py; ViTs are named 'vit_tiny')."""
    config = FvcoreCfgNode()
    config.MODEL = FvcoreCfgNode({"BACKBONE_ARCH": "vit_tiny" if entry.arch == VIT else entry.arch})
    config.SOLVER = FvcoreCfgNode({"OPTIMIZING_METHOD": "LARS", "BASE_LR": 0.3, "TOTAL_EPOCHS": 200})
    config.MULTI_VIEWS_TRANSFORMS = FvcoreCfgNode({"NMB_CROPS": [2, 6], "GLOBAL_CROPS_SCALE": [0.25, 1.0]})
    config.SSL_METHOD = next(
        method for method in ("DINO", "SWAV", "MOCO") if f"_{method.lower()}_" in entry.name
    )
    config.USE_FP16 = False
    config.freeze()
    return config


def write_upstream_layout(entry: released.Released) -> dict:
    """The checkpoint ``entry``'s upstream project saves, holding synthetic weights (UPSTREAM_LAYOUTS)."""
    state = expanded_backbone(entry.arch)
    if entry.format == "sslight":
        method = sslight_config(entry).SSL_METHOD.lower()
        checkpoint, _ = write_sslight(state, entry.arch, method)
        checkpoint["config"] = sslight_config(entry)
        if method != "dino":  # Trainer.save_checkpoint keeps the loss state of DINO only
            del checkpoint["loss"]
        return checkpoint
    if entry.format == "seed":
        checkpoint, _ = write_seed(state, entry.arch)
        checkpoint["state_dict"]["module.small_queue"] = torch.randn(128, 16)  # small_patch_builder.py
        return checkpoint
    if entry.format == "compress":
        checkpoint, _ = write_compress(state, entry.arch)
        checkpoint["opt"] = argparse.Namespace(  # train_student.py's parse_option(), abridged
            student_arch="mobilenet" if entry.arch == "mobilenet_v2" else entry.arch,
            teacher_arch="resnet50",
            lr_decay_epochs=[90, 120],
            compress_memory_size=128000,
            cache_teacher=False,
            gpu=None,
            start_epoch=1,
        )
        return checkpoint
    return WRITERS[entry.format](state, entry.arch)[0]


@pytest.fixture(scope="module")
def registry_cache(tmp_path_factory):
    """A cache holding one synthetic file per registry entry, under its cache name."""
    folder = tmp_path_factory.mktemp("cache")
    for entry in ENTRIES:
        save(folder, write_upstream_layout(entry), entry.filename)
    return folder


def test_every_registered_format_has_a_cited_upstream_layout():
    assert {entry.format for entry in ENTRIES} <= set(UPSTREAM_LAYOUTS)


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_the_entry_reads_as_registered_with_trust_off(registry_cache, capsys, monkeypatch, entry):
    opened = []  # what inspect read, kept to check the values too (reading a ResNet50 twice takes seconds)
    monkeypatch.setattr(
        inspect_cmd, "open_from_arguments", lambda args: opened.append(open_from_arguments(args)) or opened[0]
    )
    path = registry_cache / entry.filename
    assert (
        inspect_cmd.inspect_main(["--checkpoint", str(path), "--branch", entry.branch]) == 0
    )  # no --trust-checkpoint
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Layouts that read the same tensors tie (a DINO backbone-only file is a torchvision / timm file).
    assert report["format"] == entry.format or entry.format in opened[0].matched_formats
    assert (report["branch"], report["arch"], report["missing"]) == (entry.branch, entry.arch, [])
    assert report["loaded"] == len(expanded_backbone(entry.arch))
    assert all((value == EVALUATED).all() for value in opened[0].state_dict.values())  # not a decoy branch


@pytest.mark.slow  # reads 26 files, 6 of them ResNet50 / ViT-S: ~70 s on the loaded shared 2-core machine
def test_the_table_reports_every_entry_with_no_trust_needed(registry_cache, capsys):
    assert released.main(["--cache-dir", str(registry_cache), "table"]) == 0
    table = capsys.readouterr().out
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert [row[0].removeprefix("| ") for row in rows] == [entry.name for entry in ENTRIES]
    for row, entry in zip(rows, ENTRIES, strict=True):
        column = dict(zip(released.TABLE_COLUMNS, [row[0].removeprefix("| "), *row[1:]], strict=True))
        assert column["trust needed"] == "no", row
        assert column["backbone keys loaded / missing"].endswith(" / 0"), row
        assert "NOT the registered" not in column["format detected"], row
        assert (column["arch"], column["branch"]) == (entry.arch, entry.branch), row
    print(table)  # shown by pytest -rP (docs/released.md)


def test_the_table_marks_a_file_that_needs_trust_and_one_read_as_another_format(tmp_path, capsys):
    """What the table is for: a cached file that a weights-only read refuses says "trust needed: yes"."""
    sslight = released.resolve("sslight_resnet18_dino_200ep")
    checkpoint = write_upstream_layout(sslight)
    checkpoint["config"] = types.SimpleNamespace(MODEL="resnet18")  # not a config type lowssl rebuilds
    save(tmp_path, checkpoint, sslight.filename)
    compress = released.resolve("compress_resnet18")
    save(tmp_path, write_upstream_layout(released.resolve("seed_resnet18_swav_r50w2")), compress.filename)
    assert released.main(["--cache-dir", str(tmp_path), "table"]) == 0
    rows = {
        line.split(" | ")[0].removeprefix("| "): line.split(" | ")
        for line in capsys.readouterr().out.splitlines()
    }
    needs_trust = dict(zip(released.TABLE_COLUMNS[1:], rows[sslight.name][1:], strict=True))
    assert needs_trust["trust needed"] == "yes"
    assert needs_trust["format detected"].startswith("unreadable: checkpoint ")
    assert "types.SimpleNamespace" in needs_trust["format detected"]
    assert rows[compress.name][1] == "seed NOT the registered compress"
    assert rows["dino_resnet50"][1] == "not cached"
