"""Where examples come from: images, sentiment text, LM corpora, tokenizers.

Real loaders (Hugging Face ``datasets``) for online use, and offline defaults that are real data
shipped inside packages from the registries.

- :mod:`~selfmodels.data.classification`: ``load_classification(task, source=..., val_fraction=...,
  val_is_test=..., seed=...)`` for mnist, fashion-mnist, cifar10 and imdb (the one task registry).
- :mod:`~selfmodels.data.images` and :mod:`~selfmodels.data.sentiment`: the per-kind loaders behind it
  (packaged MNIST subset, IDX reader, hub image conversion; Rotten Tomatoes / IMDB and the word vocabulary).
- :mod:`~selfmodels.data.corpora`: ``load_corpus(name, max_chars=...)`` for LM text (KJV, Wikipedia
  sample, both, FineWeb-Edu streaming, a local .txt) and the wiki markup cleaner.
- :mod:`~selfmodels.data.bpe`: byte-level BPE training, saving and loading, pretrained tokenizers,
  ``encode_corpus`` and ``split_stream`` (train / validation by position).
- :mod:`~selfmodels.data.splits` and :mod:`~selfmodels.data.hub`: the stratified split and the types
  every loader shares (``RawSplits``, ``Prepared``), and the hub door (offline detection, one error type).

Nothing is imported here, so ``import selfmodels.data`` stays cheap.
"""
