"""Self-modeling as an auxiliary objective, its controls, the classifier training loop and sweeps."""
