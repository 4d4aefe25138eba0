"""The on-disk activation cache: whole sequences, one memory-mappable ``.npy`` file per layer per shard.

Layout of a cache directory::

    meta.json                     model, tokenizer, data source, layers, dtype, seq_len, d_model, and
                                  the list of finished shards with the SHA-256 of each of their files
    shard_00000/token_ids.npy     (N, T) int32 token ids of the N whole sequences
    shard_00000/<layer>.npy       (N, T, d) float16 or float32 residuals at that tap

Each file is written to a temporary name and renamed; ``meta.json`` is rewritten after each shard,
so an interrupted collection keeps its finished shards and continues after them. Reading checks a
shard's checksums the first time it is touched, and refuses a corrupt or missing shard (or a cache
made by another model or tokenizer) with a message naming it. Sequences stay whole: shuffling is
over sequences, never over tokens, because a causal forward model needs each token's context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from selfmodels.artifacts import atomic_path, read_json, sha256_file, write_json
from selfmodels.errors import UserError, require

FORMAT = 1
DTYPES = {"float16": np.float16, "float32": np.float32}


def _save_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` atomically as .npy; return its SHA-256."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        checksum = sha256_file(tmp)
    return checksum


@dataclass
class CacheSpec:
    """What a cache holds; two caches with different specs are not interchangeable."""

    model: str  # e.g. "gpt:<sha256 of main.safetensors>" or a Hugging Face name@revision
    tokenizer: str  # e.g. the SHA-256 of the tokenizer JSON, or a Hugging Face name
    data_source: str
    layers: list[str]
    seq_len: int
    d_model: int
    dtype: str = "float16"
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        require(self.dtype in DTYPES, f"cache dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        require(len(self.layers) >= 1, "a cache needs at least one layer")
        require(self.seq_len >= 1 and self.d_model >= 1, "cache seq_len and d_model must be positive")


def write_cache(
    directory: Path,
    spec: CacheSpec,
    sequences: torch.Tensor,
    activations: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    shard_sequences: int = 256,
    batch_size: int = 32,
    progress: bool = True,
) -> "ActivationCache":
    """Collect ``activations(token_ids (b, T)) -> {layer: (b, T, d)}`` for all ``sequences`` (N, T).

    Resumes a partial cache with the same spec (finished shards are kept); refuses a different one.
    """
    spec.validate()
    directory = Path(directory)
    require(sequences.ndim == 2 and sequences.shape[1] == spec.seq_len, f"sequences must be (N, {spec.seq_len}), got {tuple(sequences.shape)}")
    require(sequences.shape[0] >= 1, "no sequences to cache: the corpus is empty or shorter than one sequence")
    meta_path = directory / "meta.json"
    meta = _new_meta(spec, sequences.shape[0], shard_sequences)
    if meta_path.exists():
        old = read_json(meta_path)
        _check_same(old, meta, meta_path)
        meta["shards"] = old.get("shards", [])
    dtype = DTYPES[spec.dtype]
    starts = range(0, sequences.shape[0], shard_sequences)
    bar = tqdm(starts, desc="caching activations", disable=not progress, leave=False)
    for k, start in enumerate(bar):
        if k < len(meta["shards"]):
            continue  # finished before an interruption
        name = f"shard_{k:05d}"
        chunk = sequences[start : start + shard_sequences]  # (n, T)
        collected: dict[str, list[np.ndarray]] = {layer: [] for layer in spec.layers}
        with torch.no_grad():
            for i in range(0, chunk.shape[0], batch_size):
                acts = activations(chunk[i : i + batch_size])
                for layer in spec.layers:
                    collected[layer].append(acts[layer].float().cpu().numpy().astype(dtype))  # (b, T, d)
        files = {"token_ids": _save_npy(directory / name / "token_ids.npy", chunk.numpy().astype(np.int32))}
        for layer in spec.layers:
            array = np.concatenate(collected[layer])  # (n, T, d)
            require(array.shape[-1] == spec.d_model, f"layer {layer} has width {array.shape[-1]}, the cache spec says {spec.d_model}")
            files[layer] = _save_npy(directory / name / f"{layer}.npy", array)
        meta["shards"].append({"name": name, "sequences": int(chunk.shape[0]), "sha256": files})
        write_json(meta_path, meta)
    meta["complete"] = True
    write_json(meta_path, meta)
    return ActivationCache(directory)


def _new_meta(spec: CacheSpec, n_sequences: int, shard_sequences: int) -> dict:
    return {
        "format": FORMAT,
        "model": spec.model,
        "tokenizer": spec.tokenizer,
        "data_source": spec.data_source,
        "layers": list(spec.layers),
        "seq_len": spec.seq_len,
        "d_model": spec.d_model,
        "dtype": spec.dtype,
        "sequences": int(n_sequences),
        "shard_sequences": int(shard_sequences),
        "extra": spec.extra,
        "complete": False,
        "shards": [],
    }


_IDENTITY_KEYS = ("format", "model", "tokenizer", "data_source", "layers", "seq_len", "d_model", "dtype", "sequences", "shard_sequences")


def _check_same(old: dict, new: dict, path: Path) -> None:
    for key in _IDENTITY_KEYS:
        if old.get(key) != new.get(key):
            raise UserError(
                f"the cache at {path.parent} was made with {key}={old.get(key)!r}, this run needs {new.get(key)!r}: "
                "use another --cache directory or delete that one"
            )


class ActivationCache:
    """Read access to a finished cache: sequence-level shuffled batches from memory-mapped shards."""

    def __init__(self, directory: Path, expect: dict | None = None):
        self.directory = Path(directory)
        require(self.directory.is_dir(), f"activation cache {self.directory} does not exist: collect it first")
        self.meta = read_json(self.directory / "meta.json")
        require(self.meta.get("format") == FORMAT, f"{self.directory / 'meta.json'} is not an activation cache of format {FORMAT}")
        require(self.meta.get("complete", False), f"activation cache {self.directory} is unfinished: run the collection again to complete it")
        for key, value in (expect or {}).items():
            if self.meta.get(key) != value:
                raise UserError(
                    f"activation cache {self.directory} was made with {key}={self.meta.get(key)!r}, "
                    f"but this run needs {value!r}: collect a new cache for this model"
                )
        self._verified: set[str] = set()
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self.shards = self.meta["shards"]
        self.offsets = np.cumsum([0] + [s["sequences"] for s in self.shards])

    @property
    def num_sequences(self) -> int:
        return int(self.offsets[-1])

    def _file(self, shard: dict, layer: str) -> np.ndarray:
        key = (shard["name"], layer)
        if key not in self._maps:
            path = self.directory / shard["name"] / f"{layer}.npy"
            require(layer in shard["sha256"], f"activation cache {self.directory} has no layer {layer!r}: it holds {', '.join(self.meta['layers'])}")
            if key not in self._verified:
                if not path.is_file():
                    raise UserError(f"cache shard file {path} is missing: delete the cache directory and collect it again")
                if sha256_file(path) != shard["sha256"][layer]:
                    raise UserError(f"cache shard file {path} is corrupt (checksum mismatch): delete the cache directory and collect it again")
                self._verified.add(key)
            try:
                self._maps[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise UserError(f"cache shard file {path} is unreadable ({exc}): collect the cache again") from None
        return self._maps[key]

    def verify(self) -> None:
        """Check every file's checksum now (otherwise each is checked when first read)."""
        for shard in self.shards:
            for layer in shard["sha256"]:
                self._file(shard, layer)

    def rows(self, layer: str, index: np.ndarray) -> torch.Tensor:
        """Sequences at global indices ``index`` for ``layer``: (n, T, d) float32 (or (n, T) token ids)."""
        shard_of = np.searchsorted(self.offsets, index, side="right") - 1
        out = [None] * len(index)
        for s in np.unique(shard_of):
            picks = np.nonzero(shard_of == s)[0]
            local = index[picks] - self.offsets[s]
            array = self._file(self.shards[s], layer)
            order = np.argsort(local)  # ascending reads from the memory map
            block = np.asarray(array[local[order]])
            for j, p in enumerate(picks[order]):
                out[p] = block[j]
        stacked = torch.from_numpy(np.stack(out))
        return stacked.long() if layer == "token_ids" else stacked.float()

    def batches(self, source: str, target: str, batch_size: int, generator: torch.Generator, indices: np.ndarray | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (source, target) batches of whole sequences, reshuffled (by sequence) each epoch."""
        pool = np.arange(self.num_sequences) if indices is None else np.asarray(indices)
        require(len(pool) >= 1, f"activation cache {self.directory} holds no sequences")
        while True:
            order = pool[torch.randperm(len(pool), generator=generator).numpy()]
            for i in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
                pick = order[i : i + batch_size]
                yield self.rows(source, pick), self.rows(target, pick)

    def iter_ordered(self, layers: Iterable[str], batch_size: int, indices: np.ndarray | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """All (or the given) sequences in order, for evaluation: ``{layer: tensor}`` per batch."""
        pool = np.arange(self.num_sequences) if indices is None else np.asarray(indices)
        layers = list(layers)
        for i in range(0, len(pool), batch_size):
            pick = pool[i : i + batch_size]
            yield {layer: self.rows(layer, pick) for layer in layers}
