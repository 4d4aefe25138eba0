"""The three classifiers of the self-modeling paper, built from a small config.

Every classifier names its modules so that self-modeling targets read well, and ends in a Linear
layer called ``head`` whose rows are the class logits:

- ``mlp`` (MNIST): ``flatten`` -> ``hidden`` Linear(784, H) -> ``hidden_act`` ReLU -> ``head`` Linear(H, C).
  Self-modeled: ``hidden_act``.
- ``resnet18`` (CIFAR-10): ``trunk`` (a CIFAR-style ResNet-18: 3x3 stem, no max-pool, BatchNorm,
  output 512x4x4 for 32x32 input) -> ``pool`` (average pool, flatten: 512) -> ``fc`` Linear(512, H)
  -> ``fc_act`` ReLU -> ``head`` Linear(H, C); the paper uses H = 2000. Self-modeled: ``trunk`` and ``fc_act``.
- ``bag`` (IMDB): ``embed`` EmbeddingBag(vocab, 64, mean, padding id 0) -> ``hidden`` Linear(64, H)
  -> ``hidden_act`` ReLU -> ``head`` Linear(H, C); the paper uses H = 128. Self-modeled: ``hidden_act``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from selfmodels.configs import option
from selfmodels.errors import UserError

ARCHITECTURES = ("mlp", "resnet18", "bag")
PAD = 0  # the padding id of token input (selfmodels.data.sentiment.PAD)

# The module(s) each architecture self-models by default (the paper's choice).
DEFAULT_TARGETS = {"mlp": ("hidden_act",), "resnet18": ("trunk", "fc_act"), "bag": ("hidden_act",)}


@dataclass
class ClassifierConfig:
    """What to build; data-dependent sizes (classes, input shape, vocabulary) come from the dataset."""

    arch: str = option("mlp", "classifier architecture", choices=ARCHITECTURES)
    hidden: int = option(64, "width H of the hidden layer that feeds the head")
    embed_dim: int = option(64, "embedding width of the bag-of-embeddings model")

    def validate(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.hidden < 1:
            raise UserError(f"hidden size must be a positive integer, got {self.hidden}")
        if self.embed_dim < 1:
            raise UserError(f"embedding width must be a positive integer, got {self.embed_dim}")


class MLPClassifier(nn.Module):
    """Flatten, Linear(D, H), ReLU, Linear(H, C)."""

    def __init__(self, input_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(input_dim, hidden)
        self.hidden_act = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden_act(self.hidden(self.flatten(x)))  # (B, H)
        return self.head(h)  # (B, C)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (projected when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18Trunk(nn.Module):
    """CIFAR-style ResNet-18 without its classifier: (B, 3, 32, 32) -> (B, 512, 4, 4)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        layers, channels = [], 64
        for width, stride in zip(widths, strides):
            layers.append(nn.Sequential(BasicBlock(channels, width, stride), BasicBlock(width, width, 1)))
            channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, 64, 32, 32)
        x = self.layer2(self.layer1(x))  # (B, 128, 16, 16)
        return self.layer4(self.layer3(x))  # (B, 512, 4, 4)


class ResNetClassifier(nn.Module):
    """ResNet-18 trunk, average pool, Linear(512, H), ReLU, Linear(H, C)."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int):
        super().__init__()
        self.trunk = ResNet18Trunk(in_channels)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(512, hidden)
        self.fc_act = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.trunk(x))  # (B, 512)
        return self.head(self.fc_act(self.fc(features)))  # (B, C)


class BagOfEmbeddings(nn.Module):
    """EmbeddingBag(V, E, mean), Linear(E, H), ReLU, Linear(H, C).

    Input is a LongTensor (B, L) of token ids padded with 0; padding is left out of the mean (a text of
    padding only gives the zero vector). The forward packs each text's non-padding ids into one flat bag
    (ids + offsets), so the kernel never visits padding; row 0 of the table (the padding id) starts at
    zero, as with ``padding_idx=0``, and no text ever looks it up, so it gets no gradient.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean")
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        self.hidden = nn.Linear(embed_dim, hidden)
        self.hidden_act = nn.ReLU()
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = tokens != PAD  # (B, L)
        ids = tokens[keep]  # (T,) every text's words, text after text
        starts = keep.sum(1).cumsum(0) - keep.sum(1)  # (B,) where each text's words begin in ids
        e = self.embed(ids, starts)  # (B, E)
        return self.head(self.hidden_act(self.hidden(e)))  # (B, C)


def build_classifier(
    config: ClassifierConfig, *, num_classes: int, input_shape: tuple[int, ...], vocab_size: int | None = None
) -> nn.Module:
    """Build the classifier ``config`` names for data with these sizes (weights from torch's global RNG)."""
    config.validate()
    if config.arch == "mlp":
        return MLPClassifier(math.prod(input_shape), config.hidden, num_classes)
    if config.arch == "resnet18":
        if len(input_shape) != 3:
            raise UserError(f"resnet18 needs image input (C, H, W), got input shape {tuple(input_shape)}")
        return ResNetClassifier(input_shape[0], config.hidden, num_classes)
    if vocab_size is None:
        raise UserError("the bag-of-embeddings model needs token data with a vocabulary (e.g. task imdb)")
    return BagOfEmbeddings(vocab_size, config.embed_dim, config.hidden, num_classes)
