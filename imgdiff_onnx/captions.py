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
when they are installed) and NLTK's WordNet reader keeps every part of speech's index (~135 MB),
while this step needs only the noun index and exceptions and the tagger's tables (~50 MB).
`lexicon.py` reimplements exactly the two calls the original makes (NLTK 3.9+); the tests
compare both against the installed NLTK on every WordNet lemma and its plural-like forms. The
data is found where NLTK looks for it (NLTK_DATA, then the user and system paths), as folders or
zips. Missing data
is an error naming the download command: there is no fallback that would silently change
results.
"""

from __future__ import annotations

import re

from .lexicon import DOWNLOAD_COMMAND, CaptionDataMissing, Lexicon
from .worddiff import WordDiffTooComplex, differ_lines

__all__ = ["DOWNLOAD_COMMAND", "CaptionDataMissing", "WordDiffTooComplex", "caption_words", "ensure_available", "objects_from_captions"]

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_NON_WORD = re.compile(r"[^\w\s]")


def caption_words(caption: str) -> list[str]:
    """Step 1: a caption's word lines, as the original splits them."""
    return _NON_WORD.sub("", caption.lower().replace(" ", "\n")).splitlines()


def ensure_available() -> None:
    """Load the caption data now; raises CaptionDataMissing with the fix when it is not installed."""
    Lexicon.get()


def objects_from_captions(caption1: str, caption2: str) -> tuple[list[str], list[str]]:
    """S2: (objects1, objects2) from the two captions (see the module docstring)."""
    lexicon = Lexicon.get()
    only1: list[str] = []
    only2: list[str] = []
    # difflib.Differ().compare's lines, computed in bounded time (worddiff.py)
    for line in differ_lines(caption_words(caption1), caption_words(caption2)):
        if line.startswith("+"):
            only2.append(lexicon.lemmatize(line.replace("+ ", "")))
        elif line.startswith("-"):
            only1.append(lexicon.lemmatize(line.replace("- ", "")))
    objects1 = [w for w in only1 if w not in only2 and lexicon.tag(w) in NOUN_TAGS]
    objects2 = [w for w in only2 if w not in only1 and lexicon.tag(w) in NOUN_TAGS]
    return objects1, objects2
