"""Tiny random Hugging Face models built locally for the forward tests (no download): Llama-family models in memory,
and a tiny model of any family of the subject contract test saved to a directory with an offline tokenizer."""

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

# The one set of tiny family configs is the subject contract test's (tests/subjects/tiny_subjects.py).
SUBJECT_TESTS = str(Path(__file__).resolve().parents[1] / "subjects")
if SUBJECT_TESTS not in sys.path:
    sys.path.append(SUBJECT_TESTS)
from tiny_subjects import hf_config, perturb  # noqa: E402
from tiny_runs import tiny_tokenizer  # noqa: E402

VOCAB = 97
# Embedding rows beyond the tokenizer's tokens, as Qwen2.5 and Phi-3 pad theirs: a subject must accept them.
PADDED_ROWS = 8


def tiny_llama(seed: int = 0, layers: int = 4, attention_bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attention_bias=attention_bias)
    return LlamaForCausalLM(cfg).eval()


def tiny_other(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return MistralForCausalLM(MistralConfig(**common)).eval()


def save_family(directory: Path, kind: str, rows: int | None = None, seed: int = 0) -> Path:
    """The contract test's tiny random model of ``kind`` (a key of ``tests/subjects/tiny_subjects.hf_config``: 3 blocks,
    d 64, random norm gains) saved with the offline BPE tokenizer of ``tiny_runs`` into ``directory``. Its embedding
    has ``rows`` rows (default: the tokenizer's tokens + PADDED_ROWS unused rows; Gemma 3's image tokens sit there)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    rows = len(tokenizer) + PADDED_ROWS if rows is None else rows
    config = hf_config(kind)
    config.get_text_config().vocab_size = rows
    if kind == "gemma3":  # the image tokens of Gemma3ForConditionalGeneration: ids no text token has
        config.boi_token_index, config.eoi_token_index, config.image_token_index = rows - 3, rows - 2, rows - 1
    torch.manual_seed(seed)
    model = perturb(AutoModelForCausalLM.from_config(config), seed)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
