"""Training batches of activations computed on the fly by the frozen subject: no disk, bounded memory.

:class:`ActivationStream` cuts the training token stream into the non-overlapping consecutive windows of
:mod:`selfmodels.data.windows` (inputs only; with ``bos_id`` each window starts with BOS), visits them in a
seeded random permutation per epoch (a new one each epoch), runs the subject on ``pass_sequences`` windows at
a time (``subject.residuals`` under ``torch.no_grad()``: it stops after the deepest index asked for and never
computes the LM head), and puts the resulting *whole sequences* in an in-memory shuffle buffer. A batch is
``batch_size`` sequences drawn uniformly at random from the buffer and removed from it; before each draw the
buffer is refilled (whole passes) until it holds at least ``buffer_sequences`` sequences. A forward model
attends across positions, so a sequence is never split: mixing is over sequences, never over tokens.

Why mix. A forward model is trained by minimising MSE with stochastic gradients, and the gradient of one batch
is an unbiased, low-variance estimate of the gradient over the training distribution only if the batch is close
to an i.i.d. sample of it. Consecutive windows of a corpus are correlated: the same document and region of text,
the same topic, language or style, so similar activation statistics. A batch made of them (what running the
subject on consecutive windows and training on its output would give) is a biased, high-variance estimate, and
the optimizer chases the local text instead of the average; the on-disk cache avoided this by shuffling its
sequences. Here two levels of mixing replace that shuffle without writing anything down: the per-epoch
permutation makes each subject pass a random sample of windows from the whole stream (not one region of it),
and the buffer, filled by many passes, makes each batch a random sample across passes, so batches do not
depend on how the subject's work is grouped (pass size, the pass that straddles an epoch boundary) and stay
near-i.i.d. with large passes (what keeps an accelerator busy) and small batches.

Memory. The buffer holds at most ``buffer_sequences + pass_sequences - 1`` sequences (a refill is whole
passes), each ``len(indices) x seq_len x d`` values in the dtype the subject produced (4 bytes for float32,
2 under bfloat16 autocast or for a bfloat16 subject), so memory is bounded by about
``buffer_sequences x len(indices) x seq_len x d x 4`` bytes plus one pass of the subject, whatever the
token budget: a run ten times longer uses the same memory. Only the token ids (the stream given) grow with
the corpus. Batches are returned as float32 copies on the subject's device.

Sharding. With ``shard=(rank, world)`` every rank draws the same permutation (it depends only on the seed and
the epoch) and takes every ``world``-th window of it, so the ranks' windows are disjoint and together cover
the epoch; each rank mixes its own buffer with its own draw generator.

Resuming. :meth:`ActivationStream.state_dict` is a small JSON-able dict: the draw generator's state, the
epoch and position in the permutation, the window ids (and the pass each came from) now in the buffer, and
the counters; never the activations. :meth:`ActivationStream.load_state_dict` restores it and recomputes the
buffered sequences by re-running each of their original passes whole (same windows in the same order, so the
same batch shapes and the same arithmetic: bit-identical on a deterministic backend), keeping only the rows
still buffered. The next batch is then exactly the one an uninterrupted stream would have given.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from selfmodels.data.windows import cut_windows, window_count
from selfmodels.errors import UserError, require
from selfmodels.subjects.base import Subject
from selfmodels.training.rng import derived_seed, generator_state, set_generator_state

STATE_FORMAT = 1
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


class ActivationStream:
    """Endless batches ``{index: (B, T, d) float32}`` of the subject's residuals on shuffled whole windows.

    ``tokens``: the 1-D training token stream (any integer dtype; kept on the CPU); ``indices``: every residual
    index any forward model needs (sources and targets); ``seq_len``: window length; ``batch_size``: sequences
    per batch; ``buffer_sequences``: sequences the shuffle buffer is refilled to before each draw;
    ``pass_sequences``: windows per subject forward pass; ``seed``: the permutations and the draws;
    ``bos_id``: a BOS token starting each window (as :mod:`selfmodels.data.windows`); ``shard``: (rank, world)
    for data-parallel training; ``autocast``: None or a low-precision dtype for the subject's passes
    (``torch.bfloat16`` on CUDA).

    After each ``next()``, ``last_batch_windows`` and ``last_batch_passes`` say which window and which subject
    pass each batch row came from. Counters: ``tokens_seen`` (tokens in the batches returned), ``batches``,
    ``passes`` (subject passes run for new windows; a resume's recomputation is not counted).
    """

    def __init__(
        self,
        subject: Subject,
        tokens: torch.Tensor,
        indices: list[int],
        seq_len: int,
        batch_size: int,
        buffer_sequences: int,
        pass_sequences: int,
        seed: int,
        bos_id: int | None = None,
        shard: tuple[int, int] = (0, 1),
        autocast: torch.dtype | None = None,
    ):
        require(isinstance(tokens, torch.Tensor) and tokens.dim() == 1,
                f"the training token stream must be a 1-D tensor, got shape {tuple(getattr(tokens, 'shape', ()))}")
        require(not tokens.is_floating_point() and not tokens.is_complex() and tokens.dtype != torch.bool,
                f"the training token stream must hold integer token ids, got {tokens.dtype}")
        require(seq_len >= 2, f"sequence length must be at least 2, got {seq_len}")
        require(batch_size >= 1, f"batch_size must be at least 1, got {batch_size}")
        require(pass_sequences >= 1, f"pass_sequences (sequences per subject pass) must be at least 1, got {pass_sequences}")
        require(buffer_sequences >= batch_size,
                f"the shuffle buffer ({buffer_sequences} sequences) is smaller than a batch ({batch_size} sequences): "
                "use buffer_sequences >= batch_size (several batches, to mix many subject passes)")
        indices = sorted({int(k) for k in indices})
        require(len(indices) >= 1, "an activation stream needs at least one residual index")
        for k in indices:
            subject.check_index(k)
        rank, world = (int(x) for x in shard)
        require(world >= 1 and 0 <= rank < world, f"shard must be (rank, world) with 0 <= rank < world, got {tuple(shard)}")
        require(autocast is None or autocast in AUTOCAST_DTYPES,
                f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast}")
        self.tokens = tokens.detach().cpu()
        n_windows = window_count(self.tokens, seq_len, bos_id)
        if n_windows < 1:
            need = seq_len + (1 if bos_id is None else 0)
            raise UserError(f"the training token stream ({self.tokens.numel()} tokens) is shorter than one window of "
                            f"{need} tokens: use a larger corpus or a shorter sequence length")
        if n_windows < world:
            raise UserError(f"more ranks than shards of data: {world} ranks but the token stream holds only {n_windows} "
                            f"windows of {seq_len} tokens: use fewer ranks, a shorter sequence length or more data")
        self.subject, self.indices, self.seq_len, self.bos_id = subject, indices, int(seq_len), bos_id
        self.batch_size, self.buffer_sequences, self.pass_sequences = int(batch_size), int(buffer_sequences), int(pass_sequences)
        self.seed, self.rank, self.world, self.autocast = int(seed), rank, world, autocast
        self.n_windows = n_windows
        self.windows_per_epoch = len(range(rank, n_windows, world))  # this rank's share of one epoch
        self.capacity = self.buffer_sequences + self.pass_sequences - 1
        self._draw = torch.Generator().manual_seed(derived_seed("draw", self.seed, rank, world))
        self._orders: dict[int, torch.Tensor] = {}
        self._storage: dict[int, torch.Tensor] = {}  # index -> (capacity, T, d), allocated at the first pass
        self._free: list[int] = list(range(self.capacity))
        self._buffer: list[tuple[int, int, int, int]] = []  # (window id, pass, row in pass, slot), in arrival order
        self.passes = 0
        self.batches = 0
        self.tokens_seen = 0
        self.last_batch_windows: list[int] = []
        self.last_batch_passes: list[int] = []

    # --- the visiting order ----------------------------------------------------------------------------
    def window_order(self, epoch: int) -> torch.Tensor:
        """This rank's windows in the order epoch ``epoch`` visits them: every ``world``-th window of the epoch's
        seeded permutation (the same permutation on every rank), as a LongTensor of window ids."""
        if epoch not in self._orders:
            if len(self._orders) >= 4:  # only the current epoch (and a resume's older ones) are ever needed
                self._orders.pop(min(self._orders))
            gen = torch.Generator().manual_seed(derived_seed("epoch", self.seed, epoch))
            self._orders[epoch] = torch.randperm(self.n_windows, generator=gen)[self.rank :: self.world]
        return self._orders[epoch]

    def _window_at(self, position: int) -> int:
        """The window id at a global position of this rank's visiting order (epochs one after another)."""
        epoch, offset = divmod(position, self.windows_per_epoch)
        return int(self.window_order(epoch)[offset])

    @property
    def epoch(self) -> int:
        """The epoch the next subject pass starts in."""
        return self.passes * self.pass_sequences // self.windows_per_epoch

    @property
    def position(self) -> int:
        """Where in that epoch's order the next subject pass starts."""
        return self.passes * self.pass_sequences % self.windows_per_epoch

    def window_inputs(self, windows: list[int] | torch.Tensor) -> torch.Tensor:
        """The input token ids (n, T) of the given windows (the cutting of :mod:`selfmodels.data.windows`)."""
        starts = torch.as_tensor(windows, dtype=torch.long) * self.seq_len
        return cut_windows(self.tokens, starts, self.seq_len, self.bos_id)[0].long()

    # --- subject passes --------------------------------------------------------------------------------
    def _compute(self, pass_number: int) -> tuple[list[int], dict[int, torch.Tensor]]:
        """The windows of subject pass ``pass_number`` and their residuals {index: (P, T, d)}."""
        first = pass_number * self.pass_sequences
        windows = [self._window_at(first + row) for row in range(self.pass_sequences)]
        ids = self.window_inputs(windows)
        device = self.subject.device
        cast = torch.autocast(device_type=device.type, dtype=self.autocast) if self.autocast is not None else nullcontext()
        with torch.no_grad(), cast:
            acts = self.subject.residuals(ids, self.indices)
        return windows, acts

    def _store(self, acts: dict[int, torch.Tensor], rows: list[int], slots: list[int]) -> None:
        """Copy rows ``rows`` of one pass's residuals into buffer slots ``slots``."""
        if not self._storage:
            for k, a in acts.items():
                self._storage[k] = torch.empty((self.capacity, *a.shape[1:]), dtype=a.dtype, device=a.device)
        src = torch.as_tensor(rows, dtype=torch.long)
        dst = torch.as_tensor(slots, dtype=torch.long)
        for k in self.indices:
            store = self._storage[k]
            store.index_copy_(0, dst.to(store.device), acts[k].detach().to(store.device, store.dtype).index_select(0, src.to(acts[k].device)))

    def _run_pass(self) -> None:
        windows, acts = self._compute(self.passes)
        slots = [self._free.pop() for _ in windows]
        self._store(acts, list(range(len(windows))), slots)
        self._buffer.extend((w, self.passes, row, slot) for row, (w, slot) in enumerate(zip(windows, slots)))
        self.passes += 1

    # --- batches ---------------------------------------------------------------------------------------
    def __iter__(self) -> ActivationStream:
        return self

    def __next__(self) -> dict[int, torch.Tensor]:
        while len(self._buffer) < self.buffer_sequences:
            self._run_pass()
        pick = torch.randperm(len(self._buffer), generator=self._draw)[: self.batch_size].tolist()
        chosen = [self._buffer[i] for i in pick]
        taken = set(pick)
        self._buffer = [entry for i, entry in enumerate(self._buffer) if i not in taken]
        slots = [entry[3] for entry in chosen]
        batch = {}
        for k in self.indices:
            store = self._storage[k]
            batch[k] = store.index_select(0, torch.as_tensor(slots, dtype=torch.long, device=store.device)).float()
        self._free.extend(slots)
        self.last_batch_windows = [entry[0] for entry in chosen]
        self.last_batch_passes = [entry[1] for entry in chosen]
        self.batches += 1
        self.tokens_seen += self.batch_size * self.seq_len
        return batch

    # --- resuming --------------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"seed": self.seed, "rank": self.rank, "world": self.world, "n_windows": self.n_windows,
                "seq_len": self.seq_len, "bos_id": self.bos_id, "indices": list(self.indices),
                "batch_size": self.batch_size, "buffer_sequences": self.buffer_sequences,
                "pass_sequences": self.pass_sequences}

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly, as a small JSON-able dict (no activations)."""
        return {
            "format": STATE_FORMAT, **self._identity(),
            "epoch": self.epoch, "position": self.position,
            "passes": self.passes, "batches": self.batches, "tokens_seen": self.tokens_seen,
            "draw_generator": generator_state(self._draw),
            "buffer": [[w, p, row] for w, p, row, _ in self._buffer],  # window id, pass, row in that pass
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output, recomputing the buffered sequences from their passes' windows."""
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"activation stream state of format {state.get('format')!r}, this version reads {STATE_FORMAT}")
        mine = self._identity()
        for key, value in mine.items():
            theirs = state.get(key)
            if theirs != value:
                raise UserError(f"the saved activation stream has {key}={theirs!r}, this stream has {value!r}: "
                                "resume with the same data, subject indices and stream settings, or start again")
        buffer = [(int(w), int(p), int(row)) for w, p, row in state["buffer"]]
        passes = int(state["passes"])
        require(len(buffer) <= self.capacity and all(0 <= p < passes and 0 <= row < self.pass_sequences for _, p, row in buffer),
                "the saved activation stream's buffer does not fit its own counters: the state is corrupt")
        self.passes, self.batches, self.tokens_seen = passes, int(state["batches"]), int(state["tokens_seen"])
        set_generator_state(self._draw, state["draw_generator"])
        self._storage, self._free, self._buffer = {}, list(range(self.capacity)), []
        slots = [self._free.pop() for _ in buffer]
        by_pass: dict[int, list[int]] = {}
        for j, (_, p, _) in enumerate(buffer):
            by_pass.setdefault(p, []).append(j)
        for p in sorted(by_pass):
            windows, acts = self._compute(p)  # the whole original pass: same shapes, same arithmetic
            members = by_pass[p]
            for j in members:
                if windows[buffer[j][2]] != buffer[j][0]:
                    raise UserError(f"the saved activation stream's window {buffer[j][0]} is not where its pass put it: "
                                    "the state comes from another token stream or seed")
            self._store(acts, [buffer[j][2] for j in members], [slots[j] for j in members])
        self._buffer = [(w, p, row, slot) for (w, p, row), slot in zip(buffer, slots)]
        self.last_batch_windows, self.last_batch_passes = [], []
