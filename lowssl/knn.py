"""Weighted k-nearest-neighbour classification on L2-normalised features: DINO's k-NN.

The protocol of DINO (Caron et al. 2021; ``knn_classifier`` of
facebookresearch/dino@7c446df5b9f45747937fb0d72314eb9f7b66930a:eval_knn.py) that the authors also
use as their online monitor (docs/protocols.md, "k-NN"; docs/recipes.md, "Monitoring during
training"): cosine similarity to every training feature, the k most similar vote for their class
with weight exp(similarity / T); k = 20, T = 0.07. 1-NN, the figure SimReg and CompRess report
(docs/protocols.md, "Linear probe: SimReg and CompRess"), is the label of the single
most similar training feature and comes out of the same search.

The bank is walked in chunks, each normalised and moved to the compute device on its own: an
ImageNet-size bank (1.28M x 2048 floats, 10 GB) can stay on the CPU while device memory holds the
queries, one bank chunk and a query_chunk x bank_chunk similarity block. Results come back on the
queries' device, and every tensor is made on the device of the tensors it is combined with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class KnnResult:
    top1: float  # weighted k-NN, percent
    nn1_top1: float  # 1-NN, percent


@torch.no_grad()
def nearest_neighbours(
    bank: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    device: torch.device | str | None = None,
    query_chunk: int = 1024,
    bank_chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and bank indices (n_queries, k) of each query's k nearest bank rows, best
    first, on the queries' device; computed on ``device`` (default: the queries' device). ``k`` larger
    than the bank is an error.

    The bank is the outer loop, so each bank row moves to the device once; every query keeps a
    running top-k, merged with each chunk's top-k.
    """
    if not 1 <= k <= len(bank):
        # Never capped silently: a result would be recorded under a k it was not computed with.
        raise ValueError(f"k={k} neighbours: the bank holds {len(bank)} features, k must be 1 to {len(bank)}")
    device = queries.device if device is None else torch.device(device)
    queries_on_device = F.normalize(queries.to(device).float(), dim=1)
    best = torch.full((len(queries), 0), -2.0, device=device)
    best_index = torch.zeros((len(queries), 0), dtype=torch.long, device=device)
    for b_start in range(0, len(bank), bank_chunk):
        keys = F.normalize(bank[b_start : b_start + bank_chunk].to(device).float(), dim=1)
        merged, merged_index = [], []
        for q_start in range(0, len(queries), query_chunk):
            rows = slice(q_start, q_start + query_chunk)
            chunk_best, chunk_index = (queries_on_device[rows] @ keys.T).topk(min(k, len(keys)), dim=1)
            candidates = torch.cat([best[rows], chunk_best], dim=1)
            candidate_index = torch.cat([best_index[rows], chunk_index + b_start], dim=1)
            top, order = candidates.topk(min(k, candidates.shape[1]), dim=1)
            merged.append(top)
            merged_index.append(candidate_index.gather(1, order))
        best, best_index = torch.cat(merged), torch.cat(merged_index)
    return best.to(queries.device), best_index.to(queries.device)


def weighted_vote(
    similarities: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Class scores (n, num_classes): sum of exp(similarity / T) over the neighbours of each class."""
    scores = torch.zeros(len(similarities), num_classes, device=similarities.device)
    return scores.scatter_add_(1, neighbour_labels, (similarities / temperature).exp())


def knn_evaluate(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    device: torch.device | str | None = None,
) -> KnnResult:
    """Weighted k-NN and 1-NN top-1 (percent) of ``queries`` against the labelled ``bank``,
    computed on ``device`` (default: the queries' device)."""
    similarities, indices = nearest_neighbours(bank, queries, k, device)
    neighbour_labels = bank_labels.to(indices.device)[indices]
    predicted = weighted_vote(similarities, neighbour_labels, num_classes, temperature).argmax(dim=1)
    query_labels = query_labels.to(indices.device)
    return KnnResult(
        top1=100.0 * (predicted == query_labels).float().mean().item(),
        nn1_top1=100.0 * (neighbour_labels[:, 0] == query_labels).float().mean().item(),
    )
