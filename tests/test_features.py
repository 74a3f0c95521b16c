"""lowssl.features: frozen-backbone features, in dataset order, for every stage that reads them."""

import pytest
import torch
from torch import nn

from lowssl.backbones import build_backbone
from lowssl.data import DatasetError, SyntheticImages
from lowssl.distributed import Context
from lowssl.features import FrozenFeatures, extract_features
from lowssl.transforms import centre_crop_transform


def test_vit_feature_is_the_cls_tokens_of_the_last_four_blocks():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny_patch16_224")
    frozen = FrozenFeatures(vit, "vit", 192, vit_last_blocks=4)
    images = torch.randn(2, 3, 32, 32)
    features = frozen(images)
    assert features.shape == (2, 768) and frozen.feature_dim == 768 and not vit.training
    assert torch.allclose(features[:, -192:], vit(images), atol=1e-5)  # the last block's = the pooled output
    assert FrozenFeatures(build_backbone("resnet18"), "cnn", 512, vit_last_blocks=4).feature_dim == 512


def test_features_are_in_dataset_order_in_eval_mode_and_the_mode_is_restored():
    images = SyntheticImages(10, image_size=32, transform=centre_crop_transform(32))
    torch.manual_seed(0)
    backbone = build_backbone("resnet18").train()
    features, labels = extract_features(backbone, images, "cpu", batch_size=3, ctx=Context(0, 0, 1, "cpu"))
    assert backbone.training  # the training loop's mode is given back
    backbone.eval()
    with torch.no_grad():
        expected = backbone(torch.stack([images[i][0] for i in range(10)]))
    assert torch.allclose(features, expected, atol=1e-5) and features.dtype == torch.float32
    assert labels.tolist() == list(images.targets)


class _Unreadable(SyntheticImages):
    def __getitem__(self, index):
        if index in (1, 4):
            raise DatasetError(f"cannot read image {index}.png")
        return super().__getitem__(index)


def test_unreadable_images_are_left_out_only_when_asked():
    images = _Unreadable(6, image_size=8, transform=centre_crop_transform(8))
    flatten = nn.Flatten()
    features, labels = extract_features(flatten, images, "cpu", batch_size=4, skip_unreadable=True)
    assert len(features) == 4 and labels.tolist() == [images.targets[i] for i in (0, 2, 3, 5)]
    assert torch.equal(features[1], images[2][0].flatten())
    with pytest.raises(DatasetError, match="1.png"):
        extract_features(flatten, images, "cpu")
