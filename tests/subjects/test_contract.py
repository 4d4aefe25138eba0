"""The subject contract, checked on our GPT and on a tiny random model of every Hugging Face family.

Every subject must: give the residual stream at every index (-1 = embeddings .. last = before the final norm),
stopping early; split into prefix / middle / suffix that reproduce the logits; skip and splice blocks through
hooks (generation with a KV cache included) and always remove those hooks; split a block into per-head writes
and MLP; expose per-head weights in one layout; refuse bad input with a UserError. The subjects with no FAMILIES
row (OPT, a custom PreTrainedModel) are found structurally: everything but block_parts and head_weights, which
they refuse with one message. TransformerLens HookedTransformers (multi-head, grouped-query, parallel) go through
every check too, against TransformerLens' own hook points (``run_with_cache``) and its own forward pass.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from tiny_subjects import (ALL_KINDS, LAYERS, STRUCTURAL_KINDS, VOCAB, TinyCustomConfig, TinyCustomForCausalLM, hf_config,
                           hf_model, hf_subject, hook_count, make)

from selfmodels.subjects.transformer_lens import HookedSubject

from selfmodels.errors import UserError
from selfmodels.subjects.base import EMBED
from selfmodels.subjects.hf import FAMILIES, HFSubject, check_supported_config

ATOL = 1e-5
PAIRS = [(-1, 0), (-1, LAYERS - 1), (0, 1), (1, 2), (0, LAYERS - 1)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Models this small gain nothing from intra-op threads, and lose a lot when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _inference():
    with torch.no_grad():  # every check here is inference; the interface itself works with gradients too
        yield


@pytest.fixture(scope="module", params=ALL_KINDS)
def subject(request):
    return make(request.param)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def is_hf(subject) -> bool:
    return isinstance(subject, HFSubject)


def is_tl(subject) -> bool:
    return isinstance(subject, HookedSubject)


def structural(subject) -> bool:
    return is_hf(subject) and subject.structural


def refuses_without_a_row(subject, call) -> None:
    with pytest.raises(UserError, match=rf"needs a FAMILIES row for model_type '{subject.family}'.*must give: trunk, blocks"):
        call()


def logits_of(subject, ids: torch.Tensor) -> torch.Tensor:
    """The model's own full forward pass."""
    if is_hf(subject):
        return subject.model(input_ids=ids, use_cache=False).logits.float()
    return subject.model(ids).float()  # our GPT's and TransformerLens' forward: ids -> logits


def lm_head(subject) -> torch.nn.Module:
    if is_tl(subject):
        return subject.model.unembed
    return subject.model.get_output_embeddings() if is_hf(subject) else subject.model.lm_head


def reference_residuals(subject, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every residual index computed without the subject's machinery."""
    L = subject.n_layers
    if is_tl(subject):  # TransformerLens' own hook points: -1 = blocks.0.hook_resid_pre, k = blocks.k.hook_resid_post
        _, cache = subject.model.run_with_cache(ids)
        return {EMBED: cache["blocks.0.hook_resid_pre"], **{k: cache[f"blocks.{k}.hook_resid_post"] for k in range(L)}}
    if not is_hf(subject):
        h, out = subject.model.embed(ids), {}
        out[EMBED] = h
        for k, block in enumerate(subject.model.blocks):
            h = out[k] = block(h)
        return out
    last = {}
    handle = subject.blocks[L - 1].register_forward_hook(lambda m, a, o: last.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        hidden = subject.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        handle.remove()
    assert len(hidden) == L + 1
    out = {k: hidden[k + 1] for k in range(EMBED, L - 1)}  # hidden[L] is after the final norm
    out[L - 1] = last["h"]
    return out


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=atol)


# --- residuals -------------------------------------------------------------------------------------
def test_residuals_equal_the_models_hidden_states(subject, ids):
    reference = reference_residuals(subject, ids)
    got = subject.residuals(ids, list(range(EMBED, subject.n_layers)))
    assert sorted(got) == list(range(EMBED, subject.n_layers))
    for k, expected in reference.items():
        torch.testing.assert_close(got[k], expected, rtol=0, atol=0, msg=f"index {k}")
    if is_hf(subject):  # the last index is the residual BEFORE the final norm, unlike hidden_states[-1]
        after_norm = subject.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1]
        last = got[subject.n_layers - 1]
        assert last.shape != after_norm.shape or not torch.allclose(last, after_norm)  # OPT: projected to 32 after it


@pytest.mark.parametrize("at", [[EMBED], [0], [EMBED, 0]])
def test_residual_collection_stops_after_the_deepest_index(subject, ids, at):
    calls = {"later": 0, "head": 0}

    def count(key):
        return lambda *args: calls.__setitem__(key, calls[key] + 1)

    first_unneeded = max(at) + 1
    handles = [block.register_forward_hook(count("later")) for block in subject.blocks[first_unneeded:]]
    handles.append(lm_head(subject).register_forward_hook(count("head")))
    try:
        subject.residuals(ids, at)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"later": 0, "head": 0}


# --- splitting -------------------------------------------------------------------------------------
@pytest.mark.parametrize("source,target", PAIRS)
def test_split_reproduces_the_logits(subject, ids, source, target):
    split, reference = subject.split(source, target), reference_residuals(subject, ids)
    h_source = split.prefix(ids)
    close(h_source, reference[source])
    h_target = split.middle(h_source)
    close(h_target, reference[target])
    close(split.suffix(h_target), logits_of(subject, ids))


def test_logits_from_every_index_equals_the_logits(subject, ids):
    residuals, logits = subject.residuals(ids, list(range(EMBED, subject.n_layers))), logits_of(subject, ids)
    for k, h in residuals.items():
        close(subject.logits_from(h, k), logits)
    close(subject.logits_from(residuals[0], 0, subject.block_arguments(ids)), logits)


@pytest.mark.parametrize("source,target", PAIRS)
def test_skipping_equals_running_without_those_blocks(subject, ids, source, target):
    split = subject.split(source, target)
    with subject.skip(source, target):
        skipped = logits_of(subject, ids)
    close(skipped, split.suffix(split.prefix(ids)))
    assert not torch.allclose(skipped, logits_of(subject, ids), atol=1e-3)


# --- per-block parts ---------------------------------------------------------------------------------
def test_block_parts_add_up(subject, ids):
    if structural(subject):
        refuses_without_a_row(subject, lambda: subject.block_parts(ids, 1))
        return
    kernel = subject.model.config._attn_implementation if is_hf(subject) else None
    residuals = reference_residuals(subject, ids)
    B, T = ids.shape
    for k in range(subject.n_layers):
        parts = subject.block_parts(ids, k)
        assert all(t.dtype == torch.float32 for t in parts.values())
        # block_parts runs the eager kernel, the reference the model's default: equal up to float32 rounding of
        # residuals as large as Gemma's (its embeddings are scaled by sqrt(d))
        close(parts["input"], residuals[k - 1], atol=ATOL * max(1.0, residuals[k - 1].abs().max().item()))
        close(parts["output"], residuals[k], atol=ATOL * max(1.0, residuals[k].abs().max().item()))
        assert parts["heads"].shape == (B, T, subject.n_heads, subject.d_model)
        assert parts["attn_bias"].shape == (subject.d_model,)
        close(parts["heads"].sum(-2) + parts["attn_bias"], parts["attn_out"])
        close(parts["output"] - parts["input"], parts["attn_out"] + parts["mlp_out"])
        pattern = parts["attention"]
        assert pattern.shape == (B, subject.n_heads, T, T)
        close(pattern.sum(-1), torch.ones(B, subject.n_heads, T))
        assert pattern.triu(1).abs().max() == 0, "attention to later positions"
        assert "attention" not in subject.block_parts(ids, k, attention=False)
        experts = parts.get("experts")
        assert (experts is not None) == (is_hf(subject) and k in subject.expert_blocks())
        if experts is not None:  # each expert's write r_e * E_e(x), zero where not routed, adds up to the MLP's
            top_k = subject.text_config.num_experts_per_tok
            assert experts.shape == (B, T, subject.part(k, "experts").num_experts, subject.d_model)
            assert ((parts["expert_weights"] != 0).sum(-1) == top_k).all()
            assert ((experts.abs().amax(-1) != 0) == (parts["expert_weights"] != 0)).all()
            close(experts.sum(-2) + parts.get("shared_expert", 0), parts["mlp_out"])
            assert ("shared_expert" in parts) == (subject.family == "qwen2_moe")
    if is_hf(subject):
        assert subject.model.config._attn_implementation == kernel, "the attention kernel was not restored"
    if getattr(subject, "family", None) in ("gpt2", "gpt_neox", "llama", "gpt"):  # output projections with a bias
        assert parts["attn_bias"].abs().max() > 0


def test_post_norm_heads_share_the_scale_of_their_sum(subject, ids):
    """With a post-attention RMSNorm p(x) = g * x / rms(x), each head writes g * x_h / rms(x) with x the summed
    output: the heads are proportional to their slices of the output projection, by one scale per token."""
    if not is_hf(subject) or structural(subject) or subject.spec.post_attn_norm is None:
        assert not is_hf(subject) or "shared" not in subject.describe()["structure"].get("heads", "")
        return
    assert "shared" in subject.describe()["structure"]["heads"]
    k = 1
    captured = {}
    handle = subject.part(k, "out_proj").register_forward_pre_hook(lambda m, args: captured.setdefault("z", args[0]))
    try:
        parts = subject.block_parts(ids, k, attention=False)
    finally:
        handle.remove()
    w_o = subject.part(k, "out_proj").weight.float()
    raw = torch.stack([captured["z"][..., h * subject.d_head:(h + 1) * subject.d_head] @ w_o[:, h * subject.d_head:(h + 1) * subject.d_head].T
                       for h in range(subject.n_heads)], dim=-2)  # (B, T, H, d): before the post-norm
    heads = parts["heads"]  # = raw * g / rms(x), one factor per token and coordinate for every head:
    close(heads * raw[..., :1, :], heads[..., :1, :] * raw, atol=1e-5)  # heads_h / raw_h = heads_0 / raw_0
    close(heads.sum(-2), parts["attn_out"])
    assert not torch.allclose(parts["heads"].sum(-2), raw.sum(-2), atol=1e-3), "the post-norm changed nothing"


def test_head_weight_shapes(subject):
    if structural(subject):
        refuses_without_a_row(subject, lambda: subject.head_weights(1))
        return
    for k in range(subject.n_layers):
        heads = subject.head_weights(k)
        assert len(heads) == subject.n_heads
        for head in heads:
            for name in ("q", "k", "v"):
                assert head[name].shape == (subject.d_head, subject.d_model)
            assert head["o"].shape == (subject.d_model, subject.d_head)
        per_group = subject.n_heads // subject.n_kv_heads
        for h in range(subject.n_heads):  # query heads of one KV group read the same keys and values
            torch.testing.assert_close(heads[h]["k"], heads[h - h % per_group]["k"], rtol=0, atol=0)
        if per_group > 1:
            assert not torch.equal(heads[0]["k"], heads[per_group]["k"])


def _normalized_without_gain(norm: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    if norm is None:  # OLMo 2: the attention reads the residual itself
        return x
    if isinstance(norm, torch.nn.LayerNorm) or type(norm).__module__.startswith("transformer_lens"):  # (x - mean) / std
        return F.layer_norm(x, x.shape[-1:], eps=norm.eps)
    eps = getattr(norm, "variance_epsilon", None)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + (norm.eps if eps is None else eps))  # RMSNorm


def _without_biases(subject, k: int) -> None:
    """Zero block k's pre-attention norm shift and projection biases: head_weights holds the weights only."""
    block = subject.blocks[k]
    tl_biases = ("ln1.b", "attn.b_Q", "attn.b_K", "attn.b_V", "attn._b_K", "attn._b_V", "attn.b_O")  # TransformerLens' names
    with torch.no_grad():
        for name, p in block.named_parameters():
            if (name.endswith("bias") and "mlp" not in name) or (is_tl(subject) and name in tl_biases):
                p.zero_()


@pytest.mark.parametrize("kind", [kind for kind in ALL_KINDS if kind not in STRUCTURAL_KINDS])
def test_head_weights_reproduce_the_models_own_projections(kind, ids):
    """Recompute each head's query, key, value and output write from head_weights and the normalised input
    without gain, and compare with what the model itself computes. For HF models the states are taken where
    the model hands them to its attention function; positions are all 0 so the rotary embedding is the
    identity. Qwen3, Gemma 3 and Qwen3-MoE normalise each head's query and key after the projection, OLMo 2 all
    heads' together: applied to our side too."""
    subject, k = make(kind), 1
    _without_biases(subject, k)
    block, heads = subject.blocks[k], subject.head_weights(k)
    seen: dict = {}
    handles = [block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))]
    if is_tl(subject):  # TransformerLens' own hook points: q, k, v (B, T, H or G, dh), z, the attention's write
        handles.pop().remove()
        _, cache = subject.model.run_with_cache(ids)
        seen["x"], seen["attn_out"] = cache[f"blocks.{k}.hook_resid_pre"], cache[f"blocks.{k}.hook_attn_out"]
        states = [cache[f"blocks.{k}.attn.hook_{name}"].transpose(1, 2) for name in ("q", "k", "v")]  # (B, H or G, T, dh)
        z, out_bias = cache[f"blocks.{k}.attn.hook_z"], block.attn.b_O
    elif not is_hf(subject):
        attn = block.attn
        handles.append(attn.register_forward_hook(lambda m, args, out: seen.setdefault("attn_out", out)))
        handles.append(attn.proj.register_forward_pre_hook(lambda m, args: seen.setdefault("z", args[0])))
        try:
            subject.model(ids)
        finally:
            for handle in handles:
                handle.remove()
        B, T, d = seen["x"].shape
        q, key, v = attn.qkv(block.ln1(seen["x"])).split(d, dim=-1)  # the model's own layout, as in its forward
        states = [t.view(B, T, subject.n_heads, subject.d_head).transpose(1, 2) for t in (q, key, v)]
        z = seen["z"].view(B, T, subject.n_heads, subject.d_head)
        out_bias = attn.proj.bias
    else:
        attention = subject.part(k, "attention")
        modeling = sys.modules[type(attention).__module__]
        original = modeling.eager_attention_forward

        def recording(module, query, key, value, *args, **kwargs):
            output = original(module, query, key, value, *args, **kwargs)
            if module is attention:
                seen.setdefault("qkv", (query, key, value))
                seen.setdefault("z", output[0])  # (B, T, H, dh)
            return output

        handles.append(subject.part(k, "out_proj").register_forward_hook(lambda m, a, out: seen.setdefault("attn_out", out)))
        modeling.eager_attention_forward = recording
        try:
            with subject.attention_implementation("eager"):
                subject.model(input_ids=ids, position_ids=torch.zeros_like(ids), use_cache=False)
        finally:
            modeling.eager_attention_forward = original
            for handle in handles:
                handle.remove()
        states, z = seen["qkv"], seen["z"]  # (B, H or G, T, dh) each; z (B, T, H, dh)
        out_bias = subject.part(k, "out_proj").bias
    n = _normalized_without_gain(block.ln1 if not is_hf(subject) else subject.part(k, "pre_attn_norm"), seen["x"])
    per_group = subject.n_heads // subject.n_kv_heads
    attention_module = subject.part(k, "attention") if is_hf(subject) else None
    qk_norm = subject.spec.qk_norm if is_hf(subject) else None
    projected = {name: torch.stack([n @ head[name].T for head in heads], dim=-2) for name in ("q", "k", "v")}  # (B,T,H,dh)
    projected["k"], projected["v"] = projected["k"][..., ::per_group, :], projected["v"][..., ::per_group, :]  # (B,T,G,dh)
    for name in ("q", "k"):
        norm = getattr(attention_module, f"{name}_norm", None)
        if qk_norm == "per_head":
            projected[name] = norm(projected[name])
        elif qk_norm == "all_heads":
            projected[name] = norm(projected[name].flatten(-2)).view_as(projected[name])
    for h in range(subject.n_heads):
        for i, name in enumerate(("q", "k", "v")):
            state_index = h if name == "q" else h // per_group
            close(projected[name][..., state_index, :], states[i][:, state_index], atol=1e-4)
    writes = sum(z[:, :, h] @ head["o"].T for h, head in enumerate(heads))  # (B, T, d)
    close(writes + (0 if out_bias is None else out_bias), seen["attn_out"][0] if isinstance(seen["attn_out"], tuple) else seen["attn_out"], atol=1e-4)


# --- splicing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("source,target", PAIRS)
def test_splicing_the_true_target_reproduces_the_logits(subject, ids, source, target):
    split = subject.split(source, target)
    split.prefix(ids)  # captures this batch's block arguments for split.middle
    with subject.splice(split.middle, source, target):
        spliced = logits_of(subject, ids)
    close(spliced, logits_of(subject, ids))


def cumulative_mixer(h: torch.Tensor) -> torch.Tensor:
    """A causal predictor that mixes positions: the input plus the running mean of all positions so far."""
    counts = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
    return h + 2.0 * h.cumsum(dim=1) / counts


@pytest.mark.parametrize("source,target", [(-1, 1), (0, 2)])
def test_spliced_cached_generation_equals_uncached_greedy_decoding(subject, ids, source, target):
    """``generate()`` with a KV cache feeds the model one new token per step; the predictor must still see the
    whole prefix. Greedy decoding by hand with full uncached forward passes is the reference."""
    prompt, steps = ids[:, :5], 6
    if not is_hf(subject):  # our GPT has no generate(): a spliced forward equals the split with the predictor
        split = subject.split(source, target)
        with subject.splice(cumulative_mixer, source, target):
            spliced = logits_of(subject, ids)
        close(spliced, split.suffix(cumulative_mixer(split.prefix(ids))))
        assert not torch.allclose(spliced, logits_of(subject, ids), atol=1e-3)
        if is_tl(subject):  # TransformerLens' generate, whole-sequence passes (its KV cache passes the blocks no positions)
            with subject.splice(cumulative_mixer, source, target):
                generated = subject.model.generate(prompt, max_new_tokens=steps, do_sample=False, use_past_kv_cache=False,
                                                   stop_at_eos=False, verbose=False)
                sequence = prompt
                for _ in range(steps):
                    sequence = torch.cat([sequence, logits_of(subject, sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
            assert torch.equal(generated, sequence)
        return
    model = subject.model
    with subject.splice(cumulative_mixer, source, target):
        generated = model.generate(prompt, max_new_tokens=steps, do_sample=False, use_cache=True,
                                   return_dict_in_generate=True, output_logits=True)
        sequence, by_hand = prompt, []
        for _ in range(steps):
            last = model(input_ids=sequence, use_cache=False).logits[:, -1].float()  # (B, V)
            by_hand.append(last)
            sequence = torch.cat([sequence, last.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated.sequences, sequence)
    for cached, uncached in zip(generated.logits, by_hand):
        close(cached.float(), uncached, atol=1e-4)
    if source != 0:
        return
    plain = model.generate(prompt, max_new_tokens=steps, do_sample=False, use_cache=True,
                           return_dict_in_generate=True, output_logits=True)
    assert not torch.allclose(plain.logits[0].float(), by_hand[0], atol=1e-3), "the splice changed nothing"


# --- hooks -----------------------------------------------------------------------------------------
def test_hooks_are_always_removed(subject, ids):
    if is_hf(subject):  # transformers installs its own output-capturing hooks on first use: let it, then count
        subject.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        kernel = subject.model.config._attn_implementation
    before = hook_count(subject.model)
    subject.residuals(ids, [EMBED, 1])
    split = subject.split(0, 1)
    split.suffix(split.middle(split.prefix(ids)))
    if not structural(subject):
        subject.block_parts(ids, 1)
    subject.logits_from(subject.residuals(ids, [0])[0], 0)
    with subject.skip(0, 1):
        logits_of(subject, ids)
    with subject.splice(cumulative_mixer, -1, 1):
        logits_of(subject, ids)
    assert hook_count(subject.model) == before

    with pytest.raises(RuntimeError, match="boom"):
        with subject.splice(cumulative_mixer, 0, 2):
            assert hook_count(subject.model) > before
            raise RuntimeError("boom")
    assert hook_count(subject.model) == before

    def failing(h):
        raise RuntimeError("predictor failed")

    with pytest.raises(RuntimeError, match="predictor failed"):
        with subject.splice(failing, 0, 1):
            logits_of(subject, ids)
    assert hook_count(subject.model) == before

    if structural(subject):  # stand-ins replace every block for the logits: they are always put back
        originals = list(subject.blocks)
        handle = subject.model.get_output_embeddings().register_forward_hook(
            lambda *a: (_ for _ in ()).throw(RuntimeError("head failed")))
        try:
            with pytest.raises(RuntimeError, match="head failed"):
                subject.logits_from(subject.residuals(ids, [0])[0], 0)
        finally:
            handle.remove()
        assert all(a is b for a, b in zip(subject.blocks, originals))
    else:
        mlp = subject.part(1, "mlp") if is_hf(subject) else subject.blocks[1].mlp if is_tl(subject) else subject.blocks[1].fc
        handle = mlp.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("mlp failed")))
        try:
            with pytest.raises(RuntimeError, match="mlp failed"):
                subject.block_parts(ids, 1)
        finally:
            handle.remove()
    assert hook_count(subject.model) == before
    if is_hf(subject):
        assert subject.model.config._attn_implementation == kernel, "the attention kernel was not restored"


# --- bad input -------------------------------------------------------------------------------------
def test_out_of_range_indices_are_refused(subject, ids):
    L = subject.n_layers
    with pytest.raises(UserError, match="out of range"):
        subject.residuals(ids, [L])
    with pytest.raises(UserError, match="out of range"):
        subject.residuals(ids, [-2])
    with pytest.raises(UserError, match="must come after"):
        subject.check_pair(1, 0)
    with pytest.raises(UserError):
        subject.check_pair(3, 1)
    with pytest.raises(UserError, match="out of range"):
        subject.split(L - 1, L)
    with pytest.raises(UserError):
        subject.logits_from(torch.zeros(1, 3, subject.d_model), L)


def test_a_causal_lm_without_a_row_is_found_structurally():
    for kind in STRUCTURAL_KINDS:
        config = hf_config(kind)
        assert config.model_type not in FAMILIES
        check_supported_config(config, f"tiny-{kind}")  # not refused from its config
        subject = hf_subject(kind)
        structure = subject.describe()["structure"]
        assert subject.structural and structure["found"].startswith("structurally")
        assert structure["blocks"] == {"opt": "model.decoder.layers", "custom": "layers"}[kind]
        assert structure["final_norm"] == {"opt": "model.decoder.final_layer_norm", "custom": "norm"}[kind]
        assert structure["lm_head"] == {"opt": "lm_head", "custom": "head"}[kind]


class _UnlistedBlocks(TinyCustomForCausalLM):
    """The custom model with its blocks as separate attributes: no nn.ModuleList of them to find."""

    def __init__(self, config):
        super().__init__(config)
        for k, block in enumerate(self.layers):
            self.add_module(f"block{k}", block)
        del self.layers


def test_a_model_whose_blocks_cannot_be_found_is_refused_naming_what_a_row_gives():
    with pytest.raises(UserError) as refused:
        HFSubject(_UnlistedBlocks(TinyCustomConfig()), name="tiny-unlisted")
    message = str(refused.value)
    assert "cannot be found" in message and "'tiny_custom'" in message and "nn.ModuleList of 3 modules" in message
    assert "must give: trunk, blocks" in message and all(family in message for family in FAMILIES)


def test_what_is_not_a_decoder_only_causal_lm_is_refused():
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(UserError, match="LM head"):
        HFSubject(hf_model("llama").model, name="bare trunk")
    bert = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32))
    with pytest.raises(UserError, match="is not a causal LM"):
        HFSubject(bert, name="tiny-bert")
    with pytest.raises(UserError, match="a subject needs a Hugging Face causal LM"):
        HFSubject(torch.nn.Linear(2, 2), name="a linear layer")


def test_an_encoder_decoder_model_is_refused_as_not_decoder_only(tmp_path):
    from transformers import BartConfig

    from selfmodels.subjects.hf_loading import load_causal_lm

    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
    with pytest.raises(UserError, match="encoder-decoder model: a subject is a decoder-only causal LM"):
        check_supported_config(config, "tiny-bart")
    config.save_pretrained(tmp_path)  # refused from its config, before any weights
    with pytest.raises(UserError, match="decoder-only"):
        load_causal_lm(str(tmp_path))


def test_loader_refuses_what_transformers_cannot_build_as_a_causal_lm_before_loading_weights(tmp_path):
    from transformers import ViTConfig

    from selfmodels.subjects.hf_loading import load_causal_lm

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="'vit'.* is not a causal LM"):  # a config only: refusing needs no weights
        load_causal_lm(str(tmp_path))


def test_mixed_attention_types_pass_each_block_its_own_arguments(ids):
    """Sliding-window layers among full ones get their own mask (and in Gemma 3 their own rotary embedding):
    splitting passes each block what the model passes it, so the split is exact (ids are longer than the window);
    the first block's arguments for every block would not be."""
    for kind in ("qwen2-sliding", "gemma2", "gemma3_text"):
        subject = hf_subject(kind)
        assert sorted(set(subject.layer_types())) == ["full_attention", "sliding_attention"]
        assert subject.text_config.sliding_window < ids.shape[1]
        assert subject.describe()["structure"]["attention_types"] == ["full_attention", "sliding_attention"]
        per_block = subject.block_arguments(ids)
        assert sorted(per_block) == list(range(subject.n_layers))
        h = subject.residuals(ids, [EMBED])[EMBED]
        close(subject.logits_from(h, EMBED, per_block), logits_of(subject, ids))
        one_for_all = {k: per_block[0] for k in per_block}
        assert not torch.allclose(subject.logits_from(h, EMBED, one_for_all), logits_of(subject, ids), atol=1e-3)


def test_final_logit_softcap_is_applied_as_the_model_does(ids):
    """Gemma 2 (and Gemma 3 text-only) cap their logits in the causal LM's forward, c * tanh(logits / c): our
    final norm and head apply it too, or every KL against the model's own logits would be wrong."""
    for kind in ("gemma2", "gemma3_text"):
        subject = hf_subject(kind)
        assert subject.logit_softcap == hf_config(kind).final_logit_softcapping
        assert subject.describe()["structure"]["final_logit_softcap"] == subject.logit_softcap
        last = subject.residuals(ids, [subject.n_layers - 1])[subject.n_layers - 1]
        ours, theirs = subject.logits_from(last, subject.n_layers - 1), logits_of(subject, ids)
        close(ours, theirs)
        assert theirs.abs().max() < subject.logit_softcap
        uncapped = subject.model.get_output_embeddings()(subject.trunk.norm(last)).float()
        assert uncapped.abs().max() > 1.5 * subject.logit_softcap, "the cap bends nothing at this size"


@pytest.mark.parametrize("kind", ["llama", *STRUCTURAL_KINDS, "tl-mha"])
def test_token_ids_outside_the_embedding_are_refused(ids, kind):
    subject = make(kind)
    for bad in (VOCAB, VOCAB + 5, -1):
        wrong = ids.clone()
        wrong[0, 3] = bad
        with pytest.raises(UserError, match=f"0..{VOCAB - 1}"):
            subject.residuals(wrong, [0])
        with pytest.raises(UserError, match="embedding has"):
            subject.split(0, 1).prefix(wrong)
        if not structural(subject):
            with pytest.raises(UserError, match="embedding has"):
                subject.block_parts(wrong, 1)


# --- description and source ------------------------------------------------------------------------
def test_describe(subject):
    info = subject.describe()
    for key in ("family", "params", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "vocab_size",
                "id", "revision", "weights_sha256"):
        assert key in info, key
    assert info["n_layers"] == subject.n_layers == LAYERS
    assert info["params"] == sum(p.numel() for p in subject.model.parameters())
    assert re.fullmatch(r"[0-9a-f]{64}", info["weights_sha256"])
    assert info["revision"] is None
    assert info["indices"] == {"-1": "blocks.0.hook_resid_pre",
                               **{str(k): f"blocks.{k}.hook_resid_post" for k in range(LAYERS)}}
    if structural(subject):
        assert info["family"] not in FAMILIES and info["vocab_size"] == VOCAB
        assert (info["n_heads"], info["d_head"], info["n_kv_heads"], info["d_model"]) == (4, 16, 4, 64)
        assert info["structure"]["found"].startswith("structurally") and info["structure"]["experts"] is None
        assert subject.parts_unavailable.startswith(f"model_type {info['family']!r} has no FAMILIES row")  # analyses read it
        json.dumps(info)
    elif is_tl(subject):  # its id is the config's model_name; its identity the weights in memory, as every subject's
        assert info["family"] == "transformer_lens" and info["id"] == subject.model.cfg.model_name
        assert info["weights_hash"] == "tensors-bf16-sha256/1" and info["vocab_size"] == VOCAB
        assert (info["n_heads"], info["d_head"], info["n_kv_heads"]) == (4, 16, subject.model.cfg.n_key_value_heads or 4)
        json.dumps(info)
    elif is_hf(subject):
        assert info["family"] in FAMILIES and info["vocab_size"] == VOCAB and subject.parts_unavailable is None
        assert (info["n_heads"], info["d_head"], info["n_kv_heads"]) == (
            (4, 16, 4) if info["family"] in ("gpt2", "gpt_neox") else (4, 16, 2))
        structure = info["structure"]
        assert structure["found"].startswith(f"row {info['family']!r}")
        assert structure["norms"] == {"gemma2": "pre+post", "gemma3_text": "pre+post", "gemma3": "pre+post",
                                      "olmo2": "post"}.get(info["family"], "pre")
        assert (structure["experts"] is not None) == (info["family"] in ("qwen3_moe", "qwen2_moe", "mixtral"))
        json.dumps(info)  # it goes into results.json


def test_source_is_digested_once_while_the_weights_stay_and_can_name_its_origin(monkeypatch):
    import selfmodels.subjects.hf as hf

    calls = []
    real = hf.weights_digest
    monkeypatch.setattr(hf, "weights_digest", lambda model: calls.append(1) or real(model))  # counts, changes nothing
    subject = hf_subject("llama")
    first = subject.source_info()["weights_sha256"]
    assert subject.source_info()["weights_sha256"] == first and len(calls) == 1
    assert hf_subject("llama", seed=1).source_info()["weights_sha256"] != first
    given = {"id": "org/model", "revision": "abc123", "gguf": "x.gguf"}
    info = HFSubject(subject.model, name="m", source=given).describe()
    assert {key: info[key] for key in given} == given and info["weights_sha256"] == first
    with pytest.raises(ValueError, match="computed from the weights in memory"):
        HFSubject(subject.model, name="m", source={"weights_sha256": "0" * 64})
