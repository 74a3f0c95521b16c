"""lowssl.metrics: top-1 / top-5 hits, the accuracy of the linear probe and of semisup."""

import torch

from lowssl.metrics import topk_hits


def test_top1_and_top5_hits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    top1, top5 = topk_hits(logits, torch.tensor([0, 0, 4]))
    assert (top1.item(), top5.item()) == (1, 2)  # row 1's label is its last class, out of the top 5
    top1, top3 = topk_hits(logits[:, :3], torch.tensor([1, 0, 2]))  # 3 classes: top-3 holds them all
    assert (top1.item(), top3.item()) == (0, 3)
