"""Weighted k-nearest-neighbour classification on L2-normalised features.

The protocol of DINO (Caron et al. 2021) that the authors also use as their online monitor
(docs/protocols.md, "k-NN"; docs/recipes.md, "Monitoring during training"): cosine similarity to
every training feature, the k most similar vote for their class with weight exp(similarity / T);
k = 20, T = 0.07.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores (n_test, num_classes) of the weighted k-NN vote."""
    train_features = F.normalize(train_features.float(), dim=1)
    test_features = F.normalize(test_features.float(), dim=1)
    k = min(k, len(train_features))
    scores = []
    for start in range(0, len(test_features), chunk_size):
        similarity = test_features[start : start + chunk_size] @ train_features.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(len(similarity), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_index], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_top1(train_features, train_labels, test_features, test_labels, num_classes, k=20, temperature=0.07):
    """Top-1 accuracy in percent."""
    scores = weighted_knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return 100.0 * (scores.argmax(dim=1) == test_labels).float().mean().item()
