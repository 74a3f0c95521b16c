"""What a stage evaluates, fine-tunes or trains from, and where it came from: the one spelling of a
subject's provenance for the records of evaluate, semisup and detection.

A subject is a lowssl checkpoint or a third-party file (:meth:`Subject.of_checkpoint`: what trained it,
as the file says, "unknown" where it does not), a backbone at its random initialisation
(:meth:`Subject.random_init`) or the images themselves (:meth:`Subject.raw_pixels`). A stage fills the
provenance columns of its records from it (:meth:`Subject.record_columns`) and the pre-training budget
into ``details`` (:meth:`Subject.record_details`): results never pool numbers of different budgets
(lowssl.records.pretrain_budget), so every record carries one. detection carries the subject from
``convert`` to ``train`` inside the Detectron2 weight pickle (:meth:`Subject.to_payload`,
:meth:`Subject.from_payload`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lowssl.checkpoints.schema import UNKNOWN
from lowssl.io import CheckpointError

if TYPE_CHECKING:
    from lowssl.checkpoints import OpenedCheckpoint

#: The method of a backbone at its random initialisation.
RANDOM_INIT = "random-init"
#: The recipe and branch of a backbone that no pre-training made, and its pre-training budget.
NONE = "none"


@dataclass
class Subject:
    """A backbone and where it came from, as the records name it."""

    checkpoint: str  # SHA-256 of the file; for a random init or raw pixels, the stage's id for it
    arch: str  # a registered backbone, or "pixels"
    branch: str
    format: str  # the checkpoint format (lowssl.checkpoints.formats), "random-init" or "raw-pixels"
    method: str
    recipe: str
    pretrain_epochs: int
    seed: int | None = None  # the pre-training (or initialisation) seed, where known
    budget: str = ""  # lowssl.records.pretrain_budget; "" where not known, "none": no pre-training

    @classmethod
    def of_checkpoint(cls, opened: OpenedCheckpoint) -> Subject:
        """The branch of a checkpoint read once (lowssl.checkpoints.open_checkpoint)."""
        trained = opened.provenance
        return cls(
            checkpoint=opened.checkpoint_sha256,
            arch=opened.arch,
            branch=opened.branch,
            format=opened.format,
            method=trained.method,
            recipe=trained.recipe,
            pretrain_epochs=trained.pretrain_epochs,
            seed=trained.seed,
            budget=trained.budget,
        )

    @classmethod
    def random_init(cls, arch: str, seed: int | None, checkpoint: str, method: str = RANDOM_INIT) -> Subject:
        """``arch`` at its random initialisation with ``seed``: no recipe, branch or pre-training.
        ``checkpoint`` is the id each stage has always recorded for it (evaluate
        ``random-init-seed<N>``, semisup ``random-init:<arch>``, detection ""): stored results and
        run identities are looked up by it."""
        return cls(checkpoint, arch, NONE, RANDOM_INIT, method, NONE, 0, seed, NONE)

    @classmethod
    def raw_pixels(cls) -> Subject:
        """The images themselves, flattened: the floor under every backbone."""
        return cls("raw-pixels", "pixels", NONE, "raw-pixels", "raw-pixels", NONE, 0)

    @classmethod
    def unknown_weights(cls, sha256: str, arch: str) -> Subject:
        """Weights from elsewhere that say nothing of what trained them (a Detectron2 model zoo file)."""
        return cls(sha256, arch, UNKNOWN, "", UNKNOWN, UNKNOWN, 0)

    def record_columns(self) -> dict[str, Any]:
        """The columns of a lowssl.records.Record this subject fills."""
        return {
            "method": self.method,
            "recipe": self.recipe,
            "backbone": self.arch,
            "pretrain_epochs": self.pretrain_epochs,
            "branch": self.branch,
            "checkpoint_sha256": self.checkpoint,
            "seed": self.seed,
        }

    def record_details(self) -> dict[str, Any]:
        """What a record's ``details`` must hold of this subject: the budget, never pooled across."""
        return {"pretrain_budget": self.budget}

    def to_payload(self) -> dict[str, Any]:
        """The subject as plain data, as detection's weight pickle holds it under ``"lowssl"``."""
        return {
            "source_sha256": self.checkpoint,
            "format": self.format,
            "arch": self.arch,
            "branch": self.branch,
            "method": self.method,
            "recipe": self.recipe,
            "pretrain_epochs": self.pretrain_epochs,
            "seed": self.seed,
            "pretrain_budget": self.budget,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], where: str) -> Subject:
        """The subject :meth:`to_payload` wrote, read from the file ``where``: a field missing or of
        another type is a :class:`~lowssl.io.CheckpointError` naming the file. Pickles converted before
        budgets were carried read with the budget not known ("")."""
        text = ("source_sha256", "format", "arch", "branch", "method", "recipe")
        problems = [f"{key} is missing" for key in (*text, "pretrain_epochs") if key not in payload]
        problems += [
            f"{key} is {payload[key]!r}, not text"
            for key in (*text, "pretrain_budget")
            if key in payload and not isinstance(payload[key], str)
        ]
        whole = {"pretrain_epochs": payload.get("pretrain_epochs", 0), "seed": payload.get("seed")}
        problems += [
            f"{key} is {value!r}, not a whole number"
            for key, value in whole.items()
            if type(value) is not int and not (key == "seed" and value is None)  # bool is no number here
        ]
        if problems:
            raise CheckpointError(
                f"{where}: its lowssl entry (what the weights came from) is damaged: {'; '.join(problems)}; "
                "convert the checkpoint again with `python -m lowssl.detection convert`"
            )
        return cls(
            checkpoint=payload["source_sha256"],
            arch=payload["arch"],
            branch=payload["branch"],
            format=payload["format"],
            method=payload["method"],
            recipe=payload["recipe"],
            pretrain_epochs=payload["pretrain_epochs"],
            seed=payload.get("seed"),
            budget=payload.get("pretrain_budget", ""),
        )
