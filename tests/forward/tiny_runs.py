"""Tiny subjects and corpora for end-to-end pipeline tests (no download: models built from configs)."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

TEXT = "\n\n".join(
    f"In the beginning ({i}) the quick brown fox jumped over the lazy dog, and the dog slept. "
    f"Then the fox said: 'the dog is lazy' [{i % 7}]; the end." for i in range(300)
)

# Our GPT at toy size, trained for a few steps: flags of `reproduce forward-self-models` / `forward train`.
GPT_FLAGS = [
    "--quick", "--corpus.vocab-size", "300", "--subject.gpt.block-size", "16", "--subject.gpt.n-layer", "3",
    "--subject.gpt.n-head", "2", "--subject.gpt.d-model", "16", "--subject.lm.steps", "20", "--subject.lm.batch-size", "4",
    "--subject.lm.eval-every", "10", "--subject.lm.eval-batches", "1", "--model.d-head", "8", "--train.steps", "6",
    "--train.batch-size", "4", "--seq-len", "16", "--eval-sequences", "6", "--eval-batch", "3", "--train-sequences", "12",
    "--analysis-sequences", "4", "--device", "cpu", "--threads", "1", "--no-progress",
]
# The reproduction's sweeps at this size (the gpt-quick preset sweeps from -1 to 2, past a 3-block GPT's end).
GPT_SWEEPS = ["--sweeps.capacity-target", "1", "--sweeps.gaps", "1", "2"]

# A tiny pretrained-style subject trained from its cache: flags for `--main DIR`.
HF_FLAGS = [
    "--quick", "--corpus.max-chars", "20000", "--model.d-head", "16", "--model.swiglu-hidden", "32", "--train.steps", "6",
    "--train.batch-size", "4", "--seq-len", "16", "--eval-sequences", "4", "--eval-batch", "4", "--train-sequences", "12",
    "--baseline.hidden-mult", "1", "--baseline.steps", "same",
    "--device", "cpu", "--threads", "1", "--no-progress",
]


def write_corpus(directory: Path) -> Path:
    path = Path(directory) / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def tiny_tokenizer():
    """A byte-level BPE of ~280 tokens trained on TEXT, as a transformers fast tokenizer with a BOS token."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


def save_tiny_hf(directory: Path, family: str = "llama", seed: int = 0) -> Path:
    """A tiny random causal LM of ``family`` (4 blocks, d 64) saved with its tokenizer in ``directory``."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BartConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    configs = {
        "llama": lambda: LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
        "gpt2": lambda: GPT2Config(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, n_positions=64),
        "gpt_neox": lambda: GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                          num_attention_heads=4, rotary_pct=0.25, max_position_embeddings=64),
        # not decoder-only: refused (a subject is one stack of blocks over one residual stream)
        "bart": lambda: BartConfig(vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                   decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64),
    }
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if family == "bart" else AutoModelForCausalLM
    model = auto.from_config(configs[family]())
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
