"""Reading Detectron2 weight files without running code from them.

Detectron2's checkpointer unpickles a ``.pkl`` in full (``pickle.load``), so a weight file from
elsewhere (the model zoo, someone's conversion) could run any code it holds. Every load here goes
through lowssl's loaders instead: ``.pkl`` through the restricted unpickler of
:func:`lowssl.io.load_weights_pickle` (numpy arrays and plain data only), anything else weights-only
through :func:`lowssl.io.load_checkpoint`. ``trust`` (``--trust-checkpoint``) restores Detectron2's
own loading, for files the user vouches for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from lowssl.io import CheckpointError, load_checkpoint, load_weights_pickle


def read_weights_pickle(path: str | Path, trust: bool = False) -> dict:
    """A Detectron2 weight pickle as a mapping (restricted unpickler unless ``trust``)."""
    data = load_weights_pickle(path, trust=trust)
    if not isinstance(data, dict):
        raise CheckpointError(f"weights file {path} holds a {type(data).__name__}, not a mapping of weights")
    return data


def read_pickle_metadata(path: str | Path, trust: bool = False) -> dict | None:
    """The ``lowssl`` entry of a converted pickle; None for weights from elsewhere (model zoo files)."""
    metadata = read_weights_pickle(path, trust).get("lowssl")
    return metadata if isinstance(metadata, dict) else None


class WeightsOnlyCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, reading files through lowssl's safe loaders unless ``trust``."""

    def __init__(self, model, save_dir: str = "", *, trust: bool = False, **checkpointables) -> None:
        super().__init__(model, save_dir, **checkpointables)
        self.trust = trust

    def _load_file(self, filename: str) -> dict[str, Any]:
        if self.trust:
            return super()._load_file(filename)
        if filename.endswith(".pkl"):
            data = read_weights_pickle(filename)
            # What Detectron2's DetectionCheckpointer._load_file does with the unpickled data
            # (facebookresearch/detectron2@v0.6:detectron2/checkpoint/detection_checkpoint.py): model
            # zoo files as they are, Caffe2 / Detectron1 blobs renamed by the matching heuristics.
            if "model" in data and "__author__" in data:
                return data
            blobs = data.get("blobs", data)
            blobs = {key: value for key, value in blobs.items() if not key.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            raise CheckpointError(
                f"{filename}: pycls .pyth files are read by Detectron2's own loader only; convert it with "
                "`python -m lowssl.detection convert` or pass --trust-checkpoint if you trust it"
            )
        # Detectron2's own training checkpoints (model_final.pth, resume) and plain state dicts.
        loaded = load_checkpoint(filename)
        return loaded if isinstance(loaded, dict) and "model" in loaded else {"model": loaded}
