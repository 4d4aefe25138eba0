"""``selfmodels closed-loop --subject DIR`` on a tiny Llama: the indices are checked against the subject's blocks and
the sequence length against its positions, each as one message with exit status 2 and nothing written."""

from __future__ import annotations

import pytest

from closed_loop_hf import TINY_FLAGS, save_tiny, word_corpus
from selfmodels.cli import main


@pytest.mark.parametrize("flags, words", [
    (["--gpt.n-layer", "4", "--pair", "0", "3"], "index j (target) = 3 is out of range"),  # the Llama has 3 blocks
    (["--seq-len", "80"], "--seq-len 80 is longer than the 64 positions of"),
])
def test_a_pretrained_subjects_shape_is_checked_as_one_message(flags, words, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SELFMODELS_CACHE", str(tmp_path / "cache"))
    corpus, subject, out = word_corpus(tmp_path), str(save_tiny(tmp_path / "llama", "llama")), tmp_path / "bad"
    assert main(["closed-loop", "--out", str(out), "--corpus", corpus, "--subject", subject, *TINY_FLAGS, *flags]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("selfmodels: error")]  # beside transformers' loading bar
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in err
    assert not out.exists()
