"""The three classifiers and the CIFAR augmentation."""

import pytest
import torch

from selfmodels.errors import UserError
from selfmodels.nets.classifiers import ClassifierConfig, ResNet18Trunk, build_classifier
from selfmodels.selfmodeling.augment import random_affine_flip


def test_mlp_and_bag_shapes_and_names():
    mlp = build_classifier(ClassifierConfig("mlp", 64), num_classes=10, input_shape=(1, 28, 28))
    assert mlp(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert (mlp.hidden.in_features, mlp.head.in_features) == (784, 64)
    bag = build_classifier(ClassifierConfig("bag", 128), num_classes=2, input_shape=(12,), vocab_size=50)
    assert bag(torch.randint(0, 50, (4, 12))).shape == (4, 2)
    assert "hidden_act" in dict(bag.named_modules())


def test_bag_of_embeddings_leaves_padding_out_of_the_mean():
    bag = build_classifier(ClassifierConfig("bag", 8, embed_dim=4), num_classes=2, input_shape=(5,), vocab_size=10)
    tokens = torch.tensor([[3, 7, 0, 0, 0], [0, 0, 0, 0, 0], [1, 2, 2, 9, 4]])
    w = bag.embed.weight
    means = torch.stack([w[[3, 7]].mean(0), torch.zeros(4), w[[1, 2, 2, 9, 4]].mean(0)])  # a text of padding only: 0
    expected = bag.head(torch.relu(bag.hidden(means)))
    torch.testing.assert_close(bag(tokens), expected)
    # The padding row starts at zero (as padding_idx=0 would) and no text looks it up: it gets no gradient.
    assert torch.equal(w[0], torch.zeros(4))
    bag(tokens).sum().backward()
    assert torch.equal(w.grad[0], torch.zeros(4)) and w.grad[[1, 2, 3, 4, 7, 9]].abs().sum(1).gt(0).all()


def test_resnet18_trunk_has_the_papers_shapes():
    trunk = ResNet18Trunk(3)
    assert trunk(torch.randn(2, 3, 32, 32)).shape == (2, 512, 4, 4)  # 8,192 self-modeled units
    params = sum(p.numel() for p in trunk.parameters())
    assert 11_000_000 < params < 11_300_000  # ResNet-18's ~11.2M trunk parameters
    with pytest.raises(UserError, match="image input"):
        build_classifier(ClassifierConfig("resnet18", 20), num_classes=10, input_shape=(12,))


def test_bad_classifier_configs_are_user_errors():
    with pytest.raises(UserError, match="unknown architecture"):
        build_classifier(ClassifierConfig("vit", 8), num_classes=2, input_shape=(4,))
    with pytest.raises(UserError, match="positive"):
        build_classifier(ClassifierConfig("mlp", 0), num_classes=2, input_shape=(4,))
    with pytest.raises(UserError, match="vocabulary"):
        build_classifier(ClassifierConfig("bag", 8), num_classes=2, input_shape=(4,))


def test_augmentation_is_seeded_and_reduces_to_identity_or_flip_without_rotation_or_shift():
    images = torch.randn(6, 3, 8, 8)
    a = random_affine_flip(images, torch.Generator().manual_seed(0))
    b = random_affine_flip(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    plain = random_affine_flip(images, torch.Generator().manual_seed(1), degrees=0.0, translate=0.0)
    for out, img in zip(plain, images):
        same, flipped = torch.allclose(out, img, atol=1e-5), torch.allclose(out, img.flip(-1), atol=1e-5)
        assert same or flipped


def test_the_cifar_and_imdb_presets_build_trainable_self_modeling_objectives():
    """The paper's CIFAR setup (two targets, one of them 512x4x4, augmentation) and IMDB setup, one step each."""
    from selfmodels.selfmodeling.objectives import build_objective
    from selfmodels.selfmodeling.presets import preset

    torch.manual_seed(0)
    cifar = preset("cifar10")
    model = build_classifier(ClassifierConfig(cifar.arch, 16), num_classes=10, input_shape=(3, 32, 32))
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    obj = build_objective("self-model", model, 1.0, targets=cifar.targets, example_input=x[:2])
    assert obj.wrapper.target_sizes == {"trunk": 8192, "fc_act": 16}
    assert obj.wrapper.identity_rows == {"fc_act": (8192, 8208)}
    x = random_affine_flip(x, torch.Generator().manual_seed(0))
    obj.loss(x, y).total.backward()
    assert model.trunk.stem[0].weight.grad is not None

    imdb = preset("imdb")
    model = build_classifier(ClassifierConfig(imdb.arch, 8), num_classes=2, input_shape=(6,), vocab_size=30)
    tokens = torch.randint(0, 30, (5, 6))
    obj = build_objective("activation-l2", model, 100.0, targets=imdb.targets, example_input=tokens[:2])
    obj.loss(tokens, torch.randint(0, 2, (5,))).total.backward()
    assert model.embed.weight.grad is not None
