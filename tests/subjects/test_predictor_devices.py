"""``selfmodels.forward.evaluate.as_predictor`` (the forward model as the splice's predictor) across dtypes and devices.

What a CPU can check: a bf16 subject's residual is predicted in float32 (the forward model's master weights) and the
splice hands the block its own dtype back, equal to the split's suffix after the same prediction. What needs a GPU
(``benchmarks/gpu_check.sh``, section ``multi_gpu``): a source residual on one GPU and the forward model on another, as in
a ``device_map`` split. On a CPU the device routing is checked with a forward model whose weights are on the meta device
(no data: the test records where its input arrives)."""

from __future__ import annotations

import pytest
import torch
from tiny_subjects import VOCAB, hf_model

from selfmodels.forward.evaluate import as_predictor
from selfmodels.forward.model import ForwardModel, ForwardModelConfig
from selfmodels.subjects.hf_loading import open_model


@pytest.fixture(autouse=True)
def _inference():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        yield
    torch.set_num_threads(threads)


def forward_model(d: int = 64) -> ForwardModel:
    torch.manual_seed(0)
    return ForwardModel(ForwardModelConfig(d_model=d, n_head=1, d_head=16, mlp="swiglu", swiglu_hidden=32)).eval()


def test_a_bf16_residual_is_predicted_in_float32_and_spliced_back_in_bf16():
    model = hf_model("llama").to(torch.bfloat16)
    subject, fm = open_model(model), forward_model()
    predictor = as_predictor(fm)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    split = subject.split(0, 1)
    source = split.prefix(ids)
    assert source.dtype == torch.bfloat16
    predicted = predictor(source)
    assert predicted.dtype == torch.float32
    torch.testing.assert_close(predicted, fm(source.float()), rtol=0, atol=0)  # the fp32 model on the widened residual
    seen = []
    handle = subject.blocks[2].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        with subject.splice(predictor, 0, 1):
            spliced = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]  # the next block reads the model's own dtype
    torch.testing.assert_close(spliced, split.suffix(predicted), rtol=0, atol=0)


class _Recording(torch.nn.Module):
    """A stand-in forward model whose weight lives on the meta device: records the device and dtype its input arrives
    in and returns zeros on the CPU (meta tensors carry no data to compute with)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(4, device="meta"))
        self.seen: list[tuple[torch.device, torch.dtype]] = []

    def forward(self, h):
        self.seen.append((h.device, h.dtype))
        return torch.zeros(h.shape)


def test_the_predictor_feeds_the_forward_model_on_its_own_device():
    recording = _Recording()
    as_predictor(recording)(torch.ones(1, 3, 4, dtype=torch.bfloat16))
    assert recording.seen == [(torch.device("meta"), torch.float32)]
