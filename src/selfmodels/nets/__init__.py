"""The main models: classifiers, a nanoGPT-style GPT with named taps, and a Hugging Face causal-LM adapter."""
