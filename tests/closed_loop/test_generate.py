"""Greedy decoding with the loop closed. On a Hugging Face subject, decoding with the KV cache (one new token a step,
F kept seeing the whole prefix) equals decoding without it (the whole sequence each step), and both equal the argmax
of the closed-loop pass run on the final sequence, for every condition (shifted included); the model's own
``generate()`` under :func:`closed_forward` gives the same tokens. Our GPT has no KV cache: every step recomputes the
whole prefix, tested against the closed-loop pass the same way; the hooks on its blocks compute that same pass."""

from __future__ import annotations

import pytest
import torch

from closed_loop_hf import FAMILIES, hf_ids, hf_loop
from closed_loop_tiny import CONDITION_NAMES, SEQ, ids, tiny_loop, wake
from selfmodels.closed_loop.generate import closed_forward, generate
from selfmodels.errors import UserError
from tiny_subjects import hook_count

PROMPT, STEPS = 5, 6


def teacher_forced(closed, sequences: torch.Tensor, prompt: int, inject: bool = True) -> torch.Tensor:
    """The closed-loop pass on the final sequences: the logits (B, N, V) that chose tokens prompt .. end."""
    with torch.no_grad():
        return closed(sequences[:, :-1], inject=inject)[:, prompt - 1 :].float()


def check_greedy(closed, generated, prompt: int, inject: bool = True, atol: float = 0.0) -> None:
    expected = teacher_forced(closed, generated.sequences, prompt, inject)
    torch.testing.assert_close(generated.logits, expected, rtol=0, atol=atol)
    assert torch.equal(generated.sequences[:, prompt:], expected.argmax(-1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_cached_greedy_decoding_equals_uncached_and_the_closed_loop_pass(family, condition):
    closed = wake(hf_loop(family, condition, shift=2))
    prompt = hf_ids(length=PROMPT)
    cached = generate(closed, prompt, STEPS, use_cache=True)
    uncached = generate(closed, prompt, STEPS, use_cache=False)
    assert cached.sequences.shape == (2, PROMPT + STEPS)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.logits, uncached.logits, rtol=0, atol=1e-5)  # attention over cached keys
    # the whole prefix through the hooks each step: the pass, up to the BLAS blocking a shorter sequence's products
    # differently (bit for bit on a 2-core AVX-512 Xeon, 1.2e-6 apart on a 2-core AVX2 EPYC)
    check_greedy(closed, uncached, PROMPT, atol=1e-5)
    check_greedy(closed, cached, PROMPT, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("source, inject", [(1, 1), (-1, -1), (-1, 1)])
def test_the_hooks_hold_for_i_equal_m_and_the_embeddings(family, source, inject):
    closed = wake(hf_loop(family, "shifted", source=source, inject=inject, target=2, shift=2))
    prompt = hf_ids(length=PROMPT)
    cached = generate(closed, prompt, STEPS)
    assert torch.equal(cached.sequences, generate(closed, prompt, STEPS, use_cache=False).sequences)
    check_greedy(closed, cached, PROMPT, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_models_own_generate_under_closed_forward_decodes_the_closed_loop(family):
    closed = wake(hf_loop(family, "forward"))
    model, prompt = closed.subject.model, hf_ids(length=PROMPT)
    before = hook_count(model)
    ours = generate(closed, prompt, STEPS)
    with closed_forward(closed):
        theirs = model.generate(prompt, max_new_tokens=STEPS, do_sample=False, use_cache=True)
    assert torch.equal(theirs, ours.sequences) and hook_count(model) == before
    plain = model.generate(prompt, max_new_tokens=STEPS, do_sample=False, use_cache=True)
    without = generate(closed, prompt, STEPS, inject=False)  # the loop open: the subject's own greedy decoding
    assert torch.equal(without.sequences, plain)
    check_greedy(closed, without, PROMPT, inject=False, atol=1e-5)
    assert not torch.equal(ours.logits, without.logits)


@pytest.mark.parametrize("condition", CONDITION_NAMES)
def test_our_gpt_recomputes_the_whole_prefix_and_decodes_the_closed_loop(condition):
    closed = wake(tiny_loop(condition, shift=2))
    prompt = ids()[:, :PROMPT]
    generated = generate(closed, prompt, STEPS)
    check_greedy(closed, generated, PROMPT, atol=1e-5)  # each step is the pass on the prefix (shapes differ: see above)
    x = ids()
    with torch.no_grad(), closed_forward(closed):  # the hooks on our GPT's blocks compute the same pass
        hooked = closed.gpt(x)
    assert torch.equal(hooked, closed(x).detach())


def test_too_long_a_generation_is_one_message():
    closed = tiny_loop("forward")
    with pytest.raises(UserError, match=f"more than the {SEQ} the network takes"):
        generate(closed, ids()[:, :PROMPT], SEQ)
    with pytest.raises(UserError, match="at least 1"):
        generate(closed, ids()[:, :PROMPT], 0)
