import torch

from lowssl.knn import knn_top1, weighted_knn_predict


def test_weighted_vote_matches_hand_computation():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.1]])
    scores = weighted_knn_predict(train, labels, test, num_classes=2, k=2, temperature=0.5)
    q = torch.nn.functional.normalize(test, dim=1)[0]
    sims = train @ q  # rows already unit norm
    expected = torch.tensor([(sims[0] / 0.5).exp(), (sims[1] / 0.5).exp()])  # the third is not in the top 2
    assert torch.allclose(scores[0], expected, rtol=1e-5)


def test_separable_clusters_are_classified():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4)
    train_labels = torch.arange(200) % 4
    train = centres[train_labels] + 0.1 * torch.randn(200, 4, generator=generator)
    test_labels = torch.arange(40) % 4
    test = centres[test_labels] + 0.1 * torch.randn(40, 4, generator=generator)
    assert knn_top1(train, train_labels, test, test_labels, num_classes=4) == 100.0
    assert knn_top1(train, train_labels, test, (test_labels + 1) % 4, num_classes=4) == 0.0
