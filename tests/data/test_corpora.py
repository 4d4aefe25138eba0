"""LM corpora, the wiki markup cleaner, BPE training / saving / encoding and the positional split."""

import bz2
import re
from functools import lru_cache

import pytest
import torch

from selfmodels.data import bpe, corpora
from selfmodels.data.bpe import (encode_corpus, load_tokenizer, pretrained_tokenizer, save_tokenizer, split_stream,
                                 train_bpe)
from selfmodels.data.corpora import Corpus, clean_wiki_markup, interleave, load_corpus, truncate
from selfmodels.errors import UserError

SAMPLE = "Grüße, naïve café — 42 ½!\n\n  indented\tline\n" + "And God said, Let there be light: and there was light.\n" * 3


@lru_cache(maxsize=1)
def kjv_text() -> str:
    return load_corpus("kjv", max_chars=300_000).text


@lru_cache(maxsize=1)
def small_bpe():
    return train_bpe(kjv_text(), vocab_size=600)


# --------------------------------------------------------------------------------------------- corpora
def test_kjv_books_without_verse_numbers():
    corpus = load_corpus("kjv")
    assert len(corpus.documents) == 66 and corpus.source.startswith("offline: King James Bible")
    assert corpus.documents[0].startswith("The First Book of Moses, called Genesis\n\nIn the beginning God created")
    assert "Revelation" in corpus.documents[-1].split("\n")[0]
    assert re.search(r"\d+:\d+ ", corpus.text) is None
    assert 4_000_000 < len(corpus.text) < 4_300_000


def test_wiki_cleaner_on_hand_made_snippet():
    wikitext = (
        "{{Infobox person|name={{nowrap|Ada}}|born=1815}}\n"
        "'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref name=\"a\">Source</ref> "
        "She wrote notes<ref>Menabrea, 1843</ref> on the [[Analytical Engine|engine]].<!-- hidden -->\n"
        "[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace|Ada]] [c. 1840]]]\n"
        "== Early life ==\n"
        "* Born in [[London]] &amp; raised by her mother.\n"
        "{| class=\"wikitable\"\n| a || b\n|}\n"
        "See the [http://example.org archive] and <math>x^2</math>the ''notes''.<br/>\n"
        "[[Category:Mathematicians]]\n[[de:Ada Lovelace]]\n"
    )
    assert clean_wiki_markup(wikitext) == (
        "Ada Lovelace was an English mathematician. She wrote notes on the engine.\n"
        "Early life\n"
        "Born in London & raised by her mother.\n"
        "\n"  # where the table was
        "See the archive and the notes."
    )


def test_wiki_pages_parsed_filtered_and_cleaned(tmp_path):
    ns = "http://www.mediawiki.org/xml/export-0.10/"
    page = "<page><title>{}</title><ns>{}</ns>{}<revision><text>{}</text></revision></page>"
    xml = (f'<mediawiki xmlns="{ns}">'
           + page.format("Alpha", 0, "", "'''Alpha''' is a [[letter]].")
           + page.format("Talk:Alpha", 1, "", "chatter")
           + page.format("Alfa", 0, '<redirect title="Alpha" />', "#REDIRECT [[Alpha]]")
           + page.format("Beta", 0, "", "Beta &lt;ref&gt;x&lt;/ref&gt;follows.")
           + "</mediawiki>")
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    assert corpora.load_wikipedia(path) == ["Alpha\n\nAlpha is a letter.", "Beta\n\nBeta follows."]


def test_packaged_wikipedia_sample():
    corpus = load_corpus("wikipedia")
    assert len(corpus.documents) == 106 and "CC BY-SA" in corpus.source
    assert all(s not in corpus.text for s in ("[[", "]]", "'''", "<ref", "{|"))
    assert 2_500_000 < len(corpus.text) < 3_200_000


def test_interleave_keeps_order_and_proportion():
    a = [f"a{i}" * 10 for i in range(6)]  # 6 documents of 20 characters
    b = [f"b{i}" * 30 for i in range(2)]  # 2 documents of 60 characters
    merged = interleave(a, b)
    assert sorted(merged) == sorted(a + b)
    assert [d for d in merged if d.startswith("a")] == a and [d for d in merged if d.startswith("b")] == b
    assert merged.index(b[0]) == 2 and merged.index(b[1]) == 6  # by midpoint; ties put corpus a first


def test_offline_corpus_is_both_interleaved():
    corpus = load_corpus("offline")
    assert corpus.documents == interleave(corpora.load_kjv(), corpora.load_wikipedia())  # KJV first on ties
    assert corpus.text == "\n\n".join(corpus.documents)
    assert "King James" in corpus.source and "Wikipedia" in corpus.source


def test_truncate_is_a_prefix():
    docs = ["abc", "de", "fghij"]
    full = "\n\n".join(docs)
    for n in range(1, len(full) + 3):
        text = "\n\n".join(truncate(docs, n))
        assert full.startswith(text) and n - 2 <= len(text) <= n
    assert load_corpus("kjv", max_chars=1000).text == load_corpus("kjv").text[:1000]


def test_local_text_file_and_bad_corpora(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hello world\n", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.text == "hello world\n" and corpus.source.startswith("local file:")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(UserError, match="is empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"))
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="unknown corpus 'shakespeare'.*offline, kjv, wikipedia, fineweb-edu"):
        load_corpus("shakespeare")
    with pytest.raises(UserError, match="fineweb-edu.*HF_HUB_OFFLINE is set"):
        load_corpus("fineweb-edu", max_chars=1000)
    with pytest.raises(UserError, match="max_chars must be positive"):
        load_corpus("kjv", max_chars=0)


def test_fineweb_streams_whole_documents_up_to_max_chars(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []

    def fake_stream(repo, **kwargs):
        calls.append((repo, kwargs))
        return ({"text": f"document {i} " + "x" * 20} for i in range(1000))

    corpus = load_corpus("fineweb-edu", max_chars=100, hub=fake_stream)
    assert calls == [("HuggingFaceFW/fineweb-edu", {"name": "sample-10BT", "split": "train", "streaming": True})]
    assert corpus.text.startswith("document 0 ") and len(corpus.text) == 100 and corpus.source.startswith("hub:")

    def broken_stream(repo, **kwargs):
        yield {"text": "one document"}
        raise ConnectionError("network went away")

    with pytest.raises(UserError, match="streaming HuggingFaceFW/fineweb-edu failed after 14 characters"):
        load_corpus("fineweb-edu", max_chars=100, hub=broken_stream)


# ------------------------------------------------------------------------------------------------- BPE
def test_bpe_round_trip_size_and_determinism():
    tok = small_bpe()
    assert tok.get_vocab_size() == 600 and tok.token_to_id("<|endoftext|>") == 0
    for text in (SAMPLE, kjv_text()[:20_000]):
        assert tok.decode(tok.encode(text).ids) == text
    assert train_bpe(kjv_text(), vocab_size=600).to_str() == tok.to_str()
    assert len(tok.encode(kjv_text()[:20_000]).ids) < 20_000 / 2.5  # merges were learned: ~3+ chars per token
    with pytest.raises(UserError, match="vocab_size must be at least 257"):
        train_bpe("text", vocab_size=100)
    with pytest.raises(UserError, match="empty text"):
        train_bpe("   ")


def test_tokenizer_save_load_and_corruption(tmp_path):
    tok = small_bpe()
    path = tmp_path / "run" / "tokenizer.json"
    save_tokenizer(tok, path)
    again = load_tokenizer(path)
    assert again.encode(SAMPLE).ids == tok.encode(SAMPLE).ids and again.decode(again.encode(SAMPLE).ids) == SAMPLE
    path.write_text(path.read_text()[:500], encoding="utf-8")
    with pytest.raises(UserError, match="is corrupt"):
        load_tokenizer(path)
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")


def test_encode_corpus_chunks_equal_whole_encoding():
    tok = small_bpe()
    text = kjv_text()[:30_000] + "\n\n\n   spaced\n" + SAMPLE * 20
    chunks = bpe.chunk_text(text, 500)
    assert len(chunks) > 20 and "".join(chunks) == text
    stream = encode_corpus(tok, Corpus("t", "test", [text]), progress=False, chunk_chars=500)  # many chunks, cut at line starts
    assert stream.dtype == torch.int64 and stream.dim() == 1
    assert stream.tolist() == tok.encode(text).ids
    assert bpe.chunk_text("x" * 3000, 500) == ["x" * 3000]  # no safe cut point: left whole


def test_chunk_cuts_keep_the_gpt2_pre_tokenization():
    """The cut points keep every pre-token whole, also after blank lines (where "\n\n" + word splits into
    "\n", "\n", word in the whole text but would stay one "\n\n" at the end of a chunk)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    text = ("Verse one.\n\nVerse two.\nLine  \nNext\n\n\n   spaced\n" + SAMPLE) * 40
    pieces = lambda t: [p for p, _ in pre.pre_tokenize_str(t)]  # noqa: E731
    whole = pieces(text)
    for chunk_chars in range(40, 400, 9):  # cut points fall after every kind of line ending
        chunks = bpe.chunk_text(text, chunk_chars)
        assert len(chunks) > 5 and "".join(chunks) == text
        assert [p for chunk in chunks for p in pieces(chunk)] == whole, chunk_chars


def test_transformers_tokenizer_from_local_dir(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = small_bpe()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    loaded = pretrained_tokenizer(str(tmp_path))
    assert encode_corpus(loaded, SAMPLE, progress=False).tolist() == tok.encode(SAMPLE).ids
    with pytest.raises(UserError, match="(?s)could not load tokenizer 'no-such-org/no-such-model'.*HF_HUB_OFFLINE"):
        pretrained_tokenizer("no-such-org/no-such-model")


def test_split_stream_by_position():
    train, val = split_stream(torch.arange(100), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = split_stream(torch.arange(7), 0.5)
    assert len(train) + len(val) == 7 and train[-1] + 1 == val[0]
    with pytest.raises(UserError, match="one part would be empty"):
        split_stream(torch.arange(3), 0.1)
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        split_stream(torch.arange(10), 1.0)
    with pytest.raises(UserError, match="1-D"):
        split_stream(torch.zeros(2, 5, dtype=torch.long))
