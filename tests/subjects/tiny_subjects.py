"""Tiny random subjects for the contract tests: our GPT, one model per Hugging Face family (no download), two
causal LMs with no FAMILIES row, found structurally (OPT and a custom ``PreTrainedModel`` defined here), and
TransformerLens ``HookedTransformer`` models built from its own config (multi-head, grouped-query, parallel
attention and MLP; the extra is installed by ``make setup``, so they never skip)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

VOCAB = 97
D_MODEL = 64
LAYERS = 3
POSITIONS = 64
INIT = 0.1  # larger than the usual 0.02, so random models have distinct attention patterns and logits
SOFTCAP = 1.0  # Gemma's final logit cap, small enough that the cap visibly bends these models' logits
# Gemma 3: sliding (window 4, shorter than the test sequences) and full layers, each type with its own rotary base
GEMMA3_TEXT = dict(head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"])


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every bias and every norm gain/shift a random value (they start at 0 and 1), so that tests of
    biases and of folding the norm gain into the weights compare something."""
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("bias"):
                p.copy_(INIT * noise)
            elif p.ndim == 1:  # norm gains
                p.copy_(1 + 0.3 * noise)
    return model


def _gpt():
    from selfmodels.nets.gpt import GPT, GPTConfig
    from selfmodels.subjects.gpt import GPTSubject

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=VOCAB, block_size=POSITIONS, n_layer=LAYERS, n_head=4, d_model=D_MODEL)).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            if p.ndim == 2:
                p.mul_(INIT / 0.02)  # GPT starts its weights at N(0, 0.02)
    perturb(gpt)
    return GPTSubject(gpt, name="tiny-gpt")


def _llama_like(config_class, **extra):
    common = dict(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=POSITIONS)
    return config_class(**common, **extra)


def hf_config(kind: str):
    """The transformers config of a tiny model of ``kind`` (a FAMILIES key, or a variant of one)."""
    import transformers as tf

    special = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=INIT)
    if kind == "llama":
        return _llama_like(tf.LlamaConfig, attention_bias=True, **special)  # o_proj with a bias
    if kind == "mistral":
        return _llama_like(tf.MistralConfig, **special)
    if kind == "qwen2":
        return _llama_like(tf.Qwen2Config, **special)
    if kind == "qwen2-sliding":  # sliding-window attention in the later layers only: mixed attention types
        return _llama_like(tf.Qwen2Config, use_sliding_window=True, sliding_window=4, max_window_layers=1, **special)
    if kind == "qwen3":
        return _llama_like(tf.Qwen3Config, head_dim=16, **special)
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=D_MODEL, n_layer=LAYERS, n_head=4, **special)
    if kind in ("gpt_neox", "gpt_neox-sequential"):
        return tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=POSITIONS, rotary_pct=0.25,
                                use_parallel_residual=kind == "gpt_neox", **special)
    if kind == "gemma2":  # sliding (window 4, shorter than the test sequences) and full layers alternate
        return _llama_like(tf.Gemma2Config, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                           attn_logit_softcapping=5.0, final_logit_softcapping=SOFTCAP, **special)
    if kind == "gemma3_text":
        return _llama_like(tf.Gemma3TextConfig, **GEMMA3_TEXT, final_logit_softcapping=SOFTCAP, **special)
    if kind == "gemma3":  # Gemma3ForConditionalGeneration: a tiny SigLIP tower beside the text trunk
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                      patch_size=14)
        text = _llama_like(tf.Gemma3TextConfig, **GEMMA3_TEXT, **special)
        return tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision, mm_tokens_per_image=4, image_token_index=VOCAB - 1,
                               boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2, initializer_range=INIT)
    if kind == "phi3":  # fused [Q | K | V] with 2 KV groups for 4 query heads
        return _llama_like(tf.Phi3Config, **special)
    if kind == "olmo2":
        return _llama_like(tf.Olmo2Config, **special)
    if kind == "qwen3_moe":  # block 1 is dense (mlp_only_layers)
        return _llama_like(tf.Qwen3MoeConfig, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           mlp_only_layers=[1], **special)
    if kind == "qwen2_moe":
        return _llama_like(tf.Qwen2MoeConfig, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           shared_expert_intermediate_size=48, **special)
    if kind == "mixtral":
        return _llama_like(tf.MixtralConfig, num_local_experts=4, num_experts_per_tok=2, **special)
    if kind == "opt":  # no family row: found structurally; embeddings of 32 projected in and out of the 64-wide trunk
        return tf.OPTConfig(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, ffn_dim=128, num_attention_heads=4,
                            max_position_embeddings=POSITIONS, word_embed_proj_dim=32, **special)
    if kind == "custom":
        return TinyCustomConfig()
    raise KeyError(kind)


class TinyCustomConfig(PretrainedConfig):
    """A causal LM transformers has never heard of (no FAMILIES row)."""

    model_type = "tiny_custom"

    def __init__(self, vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, num_attention_heads=4,
                 max_position_embeddings=POSITIONS, dropout=0.0, logit_cap=3.0, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.max_position_embeddings = num_attention_heads, max_position_embeddings
        self.dropout, self.logit_cap = dropout, logit_cap
        super().__init__(**kwargs)


class TinyCustomBlock(nn.Module):
    """Pre-norm attention (KV-cached) and MLP; returns a tuple (hidden, None) as older transformers blocks do."""

    def __init__(self, config: TinyCustomConfig, index: int):
        super().__init__()
        d, self.index, self.n_head = config.hidden_size, index, config.num_attention_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, hidden_states, position_ids=None, cache=None, **kwargs):
        B, T, d = hidden_states.shape
        q, k, v = self.qkv(self.ln1(hidden_states)).view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # (B,H,T,dh)
        if cache is not None:
            k, v = cache.update(k, v, self.index)  # (B, H, T_past + T, dh)
        keys = torch.arange(k.shape[2])
        mask = keys[None, :] <= (keys[-T:])[:, None]  # (T, T_all): a query sees the keys up to its own position
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, d)
        h = hidden_states + self.drop(self.proj(z))
        return h + self.drop(self.out(F.gelu(self.fc(self.ln2(h))))), None


class TinyCustomForCausalLM(PreTrainedModel, GenerationMixin):
    """Embeddings + learned positions, blocks, final LayerNorm, head, logits soft-capped c * tanh(x / c)."""

    config_class = TinyCustomConfig

    def __init__(self, config: TinyCustomConfig):
        super().__init__(config)
        d = config.hidden_size
        self.embed, self.pos = nn.Embedding(config.vocab_size, d), nn.Embedding(config.max_position_embeddings, d)
        self.layers = nn.ModuleList(TinyCustomBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids=None, position_ids=None, cache=None, use_cache=None, attention_mask=None,
                output_hidden_states=False, **kwargs):
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1]).expand_as(input_ids)
        h = self.embed(input_ids) + self.pos(position_ids)
        hidden = [h]
        for layer in self.layers:
            h = layer(h, position_ids=position_ids, cache=cache)[0]
            hidden.append(h)
        h = self.norm(h)
        hidden[-1] = h  # as transformers: the last hidden state is after the final norm
        c = self.config.logit_cap
        logits = c * torch.tanh(self.head(h) / c)
        return CausalLMOutputWithPast(logits=logits, cache=cache if use_cache else None,
                                      hidden_states=tuple(hidden) if output_hidden_states else None)


def hf_model(kind: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = hf_config(kind)
    model = TinyCustomForCausalLM(config) if kind == "custom" else AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = None
    return perturb(model, seed).eval()


def hf_subject(kind: str, seed: int = 0):
    from selfmodels.subjects.hf import HFSubject

    return HFSubject(hf_model(kind, seed), name=f"tiny-{kind}")


def hooked_transformer(kind: str = "tl-mha", seed: int = 0):
    """A tiny random TransformerLens ``HookedTransformer`` (LayerNorm, GELU, learned positions) of ``kind``:
    ``tl-mha`` (4 heads), ``tl-gqa`` (4 query heads in 2 KV groups) or ``tl-parallel`` (attention and MLP both read
    the block's input, as GPT-J / NeoX); norm gains and biases random, so folding the gain and the biases is tested."""
    try:
        import transformer_lens
    except ImportError:  # a failure, never a skip: `make setup` installs it
        raise ImportError("transformer_lens is not installed: pip install -e '.[dev]' (it pins transformer-lens>=3.9,<4)") from None
    import warnings

    extra = {"tl-mha": {}, "tl-gqa": {"n_key_value_heads": 2}, "tl-parallel": {"parallel_attn_mlp": True}}[kind]
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=LAYERS, d_model=D_MODEL, n_ctx=POSITIONS, d_head=16, n_heads=4, d_mlp=128, d_vocab=VOCAB, act_fn="gelu",
        normalization_type="LN", seed=seed, model_name=f"tiny-{kind}", **extra)
    with warnings.catch_warnings():  # TransformerLens 3.x announces HookedTransformer's removal in 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        model = transformer_lens.HookedTransformer(cfg)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith(".w") else 0.0) + 0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


def make(kind: str, seed: int = 0):
    """A tiny subject of ``kind``: ``gpt`` (ours), a Hugging Face family (variant) or a TransformerLens model."""
    if kind in TL_KINDS:
        from selfmodels.subjects.held import as_subject

        return as_subject(hooked_transformer(kind, seed))  # found by its class: a HookedSubject
    return _gpt() if kind == "gpt" else hf_subject(kind, seed)


HF_KINDS = ["llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "gpt_neox-sequential", "qwen2-sliding",
            "gemma2", "gemma3_text", "gemma3", "phi3", "olmo2", "qwen3_moe", "qwen2_moe", "mixtral"]
STRUCTURAL_KINDS = ["opt", "custom"]  # no FAMILIES row: found structurally
TL_KINDS = ["tl-mha", "tl-gqa", "tl-parallel"]  # TransformerLens HookedTransformer (its own layer index and hook points)
ALL_KINDS = ["gpt", *HF_KINDS, *STRUCTURAL_KINDS, *TL_KINDS]


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
