"""selfmodels: self-models of neural networks.

Two methods, usable on any PyTorch model:
- self-modeling as an auxiliary objective (``selfmodels.selfmodeling``), with its complexity measures
  (``selfmodels.complexity``: weight spread and the local learning coefficient);
- forward self-models that predict a model's later-layer activations from earlier ones
  (``selfmodels.forward``).
"""

__version__ = "0.1.0"
