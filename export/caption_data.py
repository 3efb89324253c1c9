"""Build the caption data the runtime ships (imgdiff_onnx/data/caption_data.json.gz) from NLTK's files.

    python -m imgdiff_onnx_export.caption_data --nltk-data DIR [--out imgdiff_onnx/data]

DIR is an NLTK data folder with `corpora/wordnet` (WordNet 3.0) and
`taggers/averaged_perceptron_tagger_eng` (what `python -m nltk.downloader wordnet
averaged_perceptron_tagger_eng` installs). The output holds only what the caption step reads:

- `noun_lemmas`: the lemmas of WordNet's `index.noun` whose part of speech is n;
- `noun_exceptions`: WordNet's `noun.exc` (inflected form -> base forms);
- `tagger`: the averaged-perceptron tagger's `classes`, `tagdict`, and those `weights` whose
  feature a one-word sentence can produce (the caption step tags each word alone:
  lexicon._one_word_features), so the tags are NLTK's exactly;
- `sources`: the sha256 of every file read.

The file is gzip'ed JSON with sorted keys and a zero timestamp, so the same sources give the same
bytes. The licence of WordNet goes beside it; `CAPTION_DATA.md` there says where each part came from.
Needs no torch: only the standard library and imgdiff_onnx.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path

from imgdiff_onnx.engine.lexicon import PACKAGED_DATA, PACKAGED_FORMAT, TAGGER, TAGGER_FILES, WORDNET, Lexicon, _one_word_features, _Resource

# features whose text depends on the word (the rest of a one-word sentence's features are fixed)
WORD_FEATURE_PREFIXES = ("i suffix ", "i pref1 ", "i word ", "i-1 tag+i word -START- ")


def one_word_feature(name: str) -> bool:
    """Can a one-word sentence produce this tagger feature?"""
    fixed = set(_one_word_features("plane")) & set(_one_word_features("X-1"))
    return name in fixed or name.startswith(WORD_FEATURE_PREFIXES)


def _sha256(resource: _Resource, member: str) -> str:
    return hashlib.sha256(resource.read_text(member).encode("utf-8")).hexdigest()


def build(nltk_data: Path) -> dict:
    """The packaged tables, from the NLTK data folder `nltk_data`."""
    lexicon = Lexicon([nltk_data])  # reads and checks the files as the tests' reference does
    wordnet, tagger = _Resource(WORDNET, [nltk_data]), _Resource(TAGGER, [nltk_data])
    weights = json.loads(tagger.read_text(TAGGER_FILES[0]))
    return {
        "format": PACKAGED_FORMAT,
        "noun_lemmas": sorted(lexicon._nouns),
        "noun_exceptions": lexicon._noun_exceptions,
        "tagger": {
            "weights": {feature: w for feature, w in weights.items() if one_word_feature(feature)},
            "tagdict": lexicon._tagdict,
            "classes": lexicon._classes,
        },
        "sources": {
            f"{WORDNET}/{m}": _sha256(wordnet, m) for m in ("index.noun", "noun.exc")
        } | {f"{TAGGER}/{m}": _sha256(tagger, m) for m in TAGGER_FILES},
    }


def write(data: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / PACKAGED_DATA.name
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    path.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nltk-data", type=Path, required=True, help="NLTK data folder with corpora/wordnet and taggers/averaged_perceptron_tagger_eng")
    ap.add_argument("--out", type=Path, default=PACKAGED_DATA.parent, help="folder for caption_data.json.gz (default: the package's data folder)")
    args = ap.parse_args(argv)
    path = write(build(args.nltk_data), args.out)
    licence = args.nltk_data / WORDNET / "LICENSE"
    if licence.is_file():
        shutil.copyfile(licence, args.out / "LICENSE-WordNet-3.0")
    print(f"{path}: {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
