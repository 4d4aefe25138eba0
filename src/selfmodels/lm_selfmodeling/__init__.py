"""Self-modeling language models: the self-modeling objective (paper form and forward form) and its controls on
any causal LM seen through the subject interface, with the measurements that say whether it made the model
simpler (weight spread, LLC) or easier for a fresh forward model to predict, at matched validation loss.

Layering: this package sits above both research areas (``forward`` and ``selfmodeling``), which stay
independent of each other; it uses ``forward`` for the fresh observer and its co-trained model and
``complexity`` for the LLC. See ``docs/self-modeling-transformers.md``.
"""
