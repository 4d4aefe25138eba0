"""The models we train ourselves: MLP / ResNet-18 / bag-of-embeddings classifiers and a nanoGPT-style GPT."""
