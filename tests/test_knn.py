"""lowssl.knn: DINO's weighted k-NN and 1-NN, chunked over the bank, on the device of its inputs."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from lowssl.knn import knn_evaluate, nearest_neighbours, weighted_vote


def test_weighted_knn_matches_a_hand_computation_and_1nn():
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    bank_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    similarities, indices = nearest_neighbours(bank, query, k=2, bank_chunk=2)  # the bank in two chunks
    q = torch.nn.functional.normalize(query, dim=1)
    assert indices.tolist() == [[0, 1], [2, 1]]  # the third bank row is not in query 0's top 2
    assert torch.allclose(similarities[0], torch.stack([q[0] @ bank[0], q[0] @ bank[1]]))
    scores = weighted_vote(similarities, bank_labels[indices], 2, temperature=0.5)
    expected = torch.tensor([(q[0] @ bank[0] / 0.5).exp(), (q[0] @ bank[1] / 0.5).exp()])
    assert torch.allclose(scores[0], expected, rtol=1e-5)
    result = knn_evaluate(bank, bank_labels, query, torch.tensor([0, 0]), 2, k=2, temperature=0.5)
    assert (result.top1, result.nn1_top1) == (50.0, 50.0)


def test_chunking_the_bank_and_the_queries_changes_no_vote():
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(300, 16, generator=generator), torch.randn(50, 16, generator=generator)
    labels = torch.randint(0, 5, (300,), generator=generator)
    chunked = nearest_neighbours(bank, queries, k=20, query_chunk=16, bank_chunk=64)
    whole = nearest_neighbours(bank, queries, k=20)
    assert torch.equal(chunked[1], whole[1])
    scores = [weighted_vote(s, labels[i], 5, 0.07) for s, i in (chunked, whole)]
    assert torch.allclose(*scores, rtol=1e-5)


def test_separable_clusters_are_classified():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4)
    train_labels = torch.arange(200) % 4
    train = centres[train_labels] + 0.1 * torch.randn(200, 4, generator=generator)
    test_labels = torch.arange(40) % 4
    test = centres[test_labels] + 0.1 * torch.randn(40, 4, generator=generator)
    assert knn_evaluate(train, train_labels, test, test_labels, num_classes=4).top1 == 100.0
    assert knn_evaluate(train, train_labels, test, (test_labels + 1) % 4, num_classes=4).top1 == 0.0


def test_k_larger_than_the_bank_is_an_error_not_a_silent_cap():
    bank, labels = torch.eye(3), torch.arange(3)
    with pytest.raises(ValueError, match="k=4 neighbours: the bank holds 3 features, k must be 1 to 3"):
        knn_evaluate(bank, labels, bank, labels, num_classes=3, k=4)
    assert knn_evaluate(bank, labels, bank, labels, num_classes=3, k=3).top1 == 100.0


class FactoryDevices(TorchFunctionMode):
    """Records the ``device`` each tensor-making torch function is called with (None: not given, so
    the default device, the CPU, whatever the inputs' device: the bug that fails on CUDA inputs)."""

    FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.tensor, torch.arange, torch.eye}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES:
            self.calls.append((func.__name__, kwargs.get("device")))
        return func(*args, **kwargs)


def test_every_tensor_is_made_on_the_device_of_the_inputs():
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(40, 8, generator=generator), torch.randn(10, 8, generator=generator)
    bank_labels, query_labels = torch.arange(40) % 3, torch.arange(10) % 3
    with FactoryDevices() as made:
        result = knn_evaluate(bank, bank_labels, queries, query_labels, 3, k=5)
    assert made.calls and {name for name, _ in made.calls} >= {"zeros", "full"}
    assert all(torch.device(device) == bank.device for _, device in made.calls if device is not None), (
        made.calls
    )
    assert all(device is not None for _, device in made.calls), made.calls
    assert 0 <= result.top1 <= 100
