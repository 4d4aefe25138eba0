"""Subjects: every model a forward self-model can observe, behind one interface.

- :mod:`~selfmodels.subjects.base`: the :class:`Subject` interface and its hook machinery (residuals with
  early exit, split / skip / splice, block arguments), the layer index (-1 = embeddings, k = after block k);
- :mod:`~selfmodels.subjects.gpt`: our GPT as a subject; :mod:`~selfmodels.subjects.lm_training` trains it
  (optionally co-training a forward model beside it);
- :mod:`~selfmodels.subjects.hf`: Hugging Face causal LMs (Llama / SmolLM2, Mistral, Qwen2, Qwen3, GPT-2,
  GPT-NeoX / Pythia), one family table; :mod:`~selfmodels.subjects.hf_loading` loads them (SmolLM2 offline);
- :mod:`~selfmodels.subjects.registry`: ``open_subject`` by name, with its token stream (an
  :class:`~selfmodels.subjects.opened.OpenedSubject`); :mod:`~selfmodels.subjects.our_gpt`: our GPT trained
  here or read back from its cache; :mod:`~selfmodels.subjects.text`: our BPE and a corpus's token streams;
- :mod:`~selfmodels.subjects.weights`: per-head attention weights in one layout.

Nothing is imported here, so ``import selfmodels.subjects`` stays cheap.
"""
