"""The online monitors of pre-training and the records of their values.

The authors monitor a weighted 20-NN of held-out training images and train a linear probe on detached
student features while pre-training (docs/recipes.md, "Monitoring during training"): :func:`monitor_knn`
and :class:`OnlineProbe`. :func:`write_records` records the last finished epoch's values, each under
its monitor's protocol (:data:`MONITOR_PROTOCOLS`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowssl.data import IndexedImages
from lowssl.features import extract_features
from lowssl.knn import knn_evaluate
from lowssl.pretrain.config import PretrainConfig
from lowssl.progress import say
from lowssl.records import append_records, build_records, default_runs_dir, pretrain_budget
from lowssl.transforms import centre_crop_transform

# The protocol each monitor's value is recorded under, in the order of the records' rows.
MONITOR_PROTOCOLS = {
    "knn_top1_heldout": "online-knn20-heldout",
    "online_linear_top1": "online-linear-global1",
}


def monitor_knn(cfg: PretrainConfig, backbone, images, train_index, held_index, device) -> float | None:
    """The authors' online monitor: weighted 20-NN (T 0.07) of held-out training images; None (no
    number, said in one line) where the bank holds fewer images than ``monitor.knn_k``, since a k-NN
    over fewer neighbours would be recorded as the 20-NN it is not."""
    transform = centre_crop_transform(cfg.views.global_size, "bicubic", cfg.views.mean, cfg.views.std)
    bank_index = (
        train_index if cfg.monitor.knn_bank_size is None else train_index[: cfg.monitor.knn_bank_size]
    )
    skip = cfg.data.on_corrupt_image == "skip"
    bank, bank_labels = extract_features(
        backbone, IndexedImages(images, bank_index, transform), device, skip_unreadable=skip
    )
    queries, query_labels = extract_features(
        backbone, IndexedImages(images, held_index, transform), device, skip_unreadable=skip
    )
    num_classes, k, temperature = len(images.classes), cfg.monitor.knn_k, cfg.monitor.knn_temperature
    if len(bank) < k:
        say(
            f"kNN monitor skipped: its bank holds {len(bank)} readable images, fewer than monitor.knn_k={k} "
            "(more training images, or a smaller monitor.knn_k)"
        )
        return None
    return knn_evaluate(bank, bank_labels, queries, query_labels, num_classes, k, temperature).top1


class OnlineProbe:
    """A linear classifier trained on detached student features of global 1 (docs/recipes.md,
    "Monitoring during training"):
    a cheap running signal of representation quality, never back-propagated into the backbone."""

    def __init__(self, feature_dim: int, num_classes: int, device) -> None:
        self.linear = nn.Linear(feature_dim, num_classes).to(device)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=0.0, momentum=0.9)
        self.correct = self.seen = 0

    def step(self, backbone: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float) -> None:
        with torch.no_grad():
            features = backbone(images).float()
        logits = self.linear(features)
        loss = nn.functional.cross_entropy(logits, labels)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.correct += (logits.argmax(1) == labels).sum().item()
        self.seen += len(labels)

    def epoch_accuracy(self) -> float:
        accuracy = 100.0 * self.correct / max(self.seen, 1)
        self.correct = self.seen = 0
        return accuracy

    def state_dict(self) -> dict:
        """The classifier, its optimiser and the epoch's running counts (a run resumed mid-epoch
        reports the same epoch accuracy as an uninterrupted one)."""
        return {
            "linear": self.linear.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "correct": self.correct,
            "seen": self.seen,
        }

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])
        # checkpoints written before the counts were saved resume counting from zero, as they did
        self.correct, self.seen = state.get("correct", 0), state.get("seen", 0)


def write_records(
    cfg: PretrainConfig, provenance: dict, metrics: dict, run_dir: Path, performance: dict
) -> Path:
    """The monitors' values of ``metrics`` (the last finished epoch's) as the run's records;
    ``performance``: the memory format the run chose (lowssl.perf.MemoryFormatChoice.details)."""
    details = {
        "alpha": cfg.method.alpha,
        "exclusion_rule": cfg.optim.exclusion_rule,
        "views": provenance["config"]["views"],
        "run_dir": str(run_dir),
        "pretrain_budget": pretrain_budget(provenance["config"]),
        **performance,
    }
    values = {metric: metrics[metric] for metric in MONITOR_PROTOCOLS if metric in metrics}
    records = build_records(
        values,
        MONITOR_PROTOCOLS,
        run_id=pretrain_run_id(cfg, provenance["config_hash"]),
        stage="pretrain",
        method=cfg.method_name,
        recipe=cfg.recipe,
        backbone=cfg.backbone,
        pretrain_epochs=metrics["epoch"],
        dataset=cfg.data.dataset,
        branch="student",
        config_hash=provenance["config_hash"],
        git_commit=provenance["git_commit"],
        details=details,
        seed=cfg.seed,
    )
    return append_records(records, cfg.records_dir)


def pretrain_run_id(cfg: PretrainConfig, config_hash: str) -> str:
    """One run, one records file: the experiment, its seed and the hash of its resolved config (which
    holds the output folder), so another seed or folder never replaces this run's rows."""
    return f"pretrain-{cfg.experiment}-seed{cfg.seed}-{config_hash[:8]}"


def records_file(cfg: PretrainConfig, config_hash: str) -> Path:
    """The file :func:`write_records` writes the run's records to (lowssl.records.append_records)."""
    return Path(cfg.records_dir or default_runs_dir()) / f"{pretrain_run_id(cfg, config_hash)}.csv"
