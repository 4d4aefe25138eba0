"""Forward self-models: predict a model's later-layer activations from earlier ones, and evaluate them."""
