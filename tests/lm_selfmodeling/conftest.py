"""Fixtures for the self-modeling-LM tests."""

import pytest
import torch

from lm_tiny import token_stream


@pytest.fixture
def stream() -> torch.Tensor:
    return token_stream()
