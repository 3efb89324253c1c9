"""S2: which object words each image should contain, from the two captions.

Exactly Data-Juicer's compare_text_index / is_noun:
1. lower-case each caption, turn every space into a line break, delete every character that is
   neither a word character nor white space, split into lines: the words. Several spaces in a
   row give empty words; punctuation-only tokens become empty words; tabs and other white
   space (but for line breaks) stay inside a word.
2. difflib.Differ on the two word lists; lines starting "-" are caption-1-only words, "+"
   caption-2-only ("?" hint lines and "  " common lines are ignored).
3. Each such word goes through WordNetLemmatizer().lemmatize (noun lemma).
4. objects1: caption-1 lemmas not among the caption-2 lemmas whose single-word tag
   nltk.pos_tag([lemma]) is NN, NNS, NNP or NNPS; objects2 likewise. Order and duplicates kept.

NLTK's data (WordNet, averaged_perceptron_tagger_eng) is read directly, without importing nltk:
`import nltk` alone costs ~60-120 MB of resident memory (it pulls in scipy and scikit-learn
when they are installed) and NLTK's WordNet reader keeps every part of speech's index,
while this step needs only the noun index and exceptions and the tagger's tables.
`lexicon.py` reimplements exactly the two calls the original makes (NLTK 3.9+); the tests
compare both against the installed NLTK on every WordNet lemma and its plural-like forms. The
tables ship with the package (data/caption_data.json.gz, built from NLTK's files by
`python -m imgdiff_onnx_export.caption_data`), so no NLTK data has to be installed; a damaged
copy is an error, never a fallback that would silently change results.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .lexicon import DOWNLOAD_COMMAND, CaptionDataMissing, Lexicon
from .worddiff import WordDiffTooComplex, differ_lines

__all__ = ["DOWNLOAD_COMMAND", "CaptionDataMissing", "CaptionDifference", "WordDiffTooComplex", "caption_difference", "caption_words",
           "ensure_available", "objects_from_captions"]

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_NON_WORD = re.compile(r"[^\w\s]")


def caption_words(caption: str) -> list[str]:
    """Step 1: a caption's word lines, as the original splits them."""
    return _NON_WORD.sub("", caption.lower().replace(" ", "\n")).splitlines()


def ensure_available() -> None:
    """Load the caption data now; raises CaptionDataMissing with the fix when it is not installed."""
    Lexicon.get()


@dataclass(frozen=True)
class CaptionDifference:
    """S2's working: the lemmas only in caption 1 / only in caption 2 (difflib order, duplicates
    kept), each with its single-word POS tag, and the object words chosen from them."""

    only1: tuple[tuple[str, str], ...]
    only2: tuple[tuple[str, str], ...]

    @property
    def objects1(self) -> list[str]:
        lemmas2 = {w for w, _ in self.only2}
        return [w for w, tag in self.only1 if w not in lemmas2 and tag in NOUN_TAGS]

    @property
    def objects2(self) -> list[str]:
        lemmas1 = {w for w, _ in self.only1}
        return [w for w, tag in self.only2 if w not in lemmas1 and tag in NOUN_TAGS]

    def why_no_objects(self, side: int) -> str:
        """In words a user understands: why caption `side` gave no object word."""
        own, other = (self.only1, self.only2) if side == 1 else (self.only2, self.only1)
        if not own:
            return f"no object words in caption {side}: it has no word that caption {3 - side} lacks (only nouns that differ are compared)"
        others = {w for w, _ in other}
        shown = ", ".join(f"'{w}' ({'also in the other caption' if w in others else TAG_NAMES.get(tag, tag)})" for w, tag in own[:8])
        more = f" and {len(own) - 8} more" if len(own) > 8 else ""
        return f"no object words in caption {side}: its differing words {shown}{more} are not nouns found only in it"


TAG_NAMES = {"JJ": "adjective", "JJR": "adjective", "JJS": "adjective", "VB": "verb", "VBD": "verb", "VBG": "verb", "VBN": "verb",
             "VBP": "verb", "VBZ": "verb", "RB": "adverb", "RBR": "adverb", "RBS": "adverb", "IN": "preposition", "DT": "determiner",
             "CD": "number", "PRP": "pronoun", "CC": "conjunction", "TO": "'to'", "MD": "modal verb"}  # fmt: skip


def caption_difference(caption1: str, caption2: str) -> CaptionDifference:
    """S2's working (see the module docstring); `.objects1`/`.objects2` are the object words."""
    lexicon = Lexicon.get()
    only1: list[str] = []
    only2: list[str] = []
    # difflib.Differ().compare's lines, computed in bounded time (worddiff.py)
    for line in differ_lines(caption_words(caption1), caption_words(caption2)):
        if line.startswith("+"):
            only2.append(lexicon.lemmatize(line.replace("+ ", "")))
        elif line.startswith("-"):
            only1.append(lexicon.lemmatize(line.replace("- ", "")))
    return CaptionDifference(tuple((w, lexicon.tag(w)) for w in only1), tuple((w, lexicon.tag(w)) for w in only2))


def objects_from_captions(caption1: str, caption2: str) -> tuple[list[str], list[str]]:
    """S2: (objects1, objects2) from the two captions (see the module docstring)."""
    diff = caption_difference(caption1, caption2)
    return diff.objects1, diff.objects2
