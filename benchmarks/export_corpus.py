"""Write the offline default corpus as one text file that can travel with the checkout to a GPU machine.

The GPU machine has none of our offline data packages, so ``gpu_check.py``'s ``gpt_toy`` section reads the
corpus from ``benchmarks/data/offline_corpus.txt`` (ignored by git; pass it along, e.g. as a carried path).

    python benchmarks/export_corpus.py [--corpus offline] [--out benchmarks/data/offline_corpus.txt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selfmodels.artifacts import write_text
from selfmodels.data.corpora import load_corpus

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "offline_corpus.txt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default="offline", help="a corpus name of selfmodels.data.corpora")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    corpus = load_corpus(args.corpus)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, corpus.text)
    print(f"wrote {args.out}: {len(corpus.text):,} characters of {corpus.source}")


if __name__ == "__main__":
    main()
