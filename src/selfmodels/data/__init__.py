"""Where examples come from: images, sentiment text, LM corpora, tokenizers.

Real loaders (Hugging Face ``datasets``) for online use, and offline defaults that are real data
shipped inside packages from the registries.
"""
