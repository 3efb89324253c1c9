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

NLTK data (wordnet, averaged_perceptron_tagger_eng) is looked up the standard NLTK way
(NLTK_DATA, then the user and system paths); the lemmatiser and tagger are loaded once per
process. Missing data is an error naming the download command: there is no fallback that
would silently change results.
"""

from __future__ import annotations

import difflib
import functools
import re
import threading

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
DOWNLOAD_COMMAND = "python -m nltk.downloader wordnet averaged_perceptron_tagger_eng"
_NON_WORD = re.compile(r"[^\w\s]")


class CaptionDataMissing(RuntimeError):
    """NLTK's WordNet or POS tagger data is not installed."""


def caption_words(caption: str) -> list[str]:
    """Step 1: a caption's word lines, as the original splits them."""
    return _NON_WORD.sub("", caption.lower().replace(" ", "\n")).splitlines()


class _Nltk:
    """The lemmatiser and tagger, loaded on first use, once per process."""

    _lock = threading.Lock()
    _instance: "_Nltk | None" = None

    def __init__(self) -> None:
        try:
            import nltk
            from nltk.stem import WordNetLemmatizer
            from nltk.tag import PerceptronTagger
        except ImportError as exc:  # pragma: no cover - nltk is a runtime dependency
            raise CaptionDataMissing(f"the caption step needs the nltk package ({exc})") from None
        missing = []
        for resource in ("corpora/wordnet", "taggers/averaged_perceptron_tagger_eng/"):
            try:
                nltk.data.find(resource)
            except LookupError:
                try:
                    nltk.data.find(resource.rstrip("/") + ".zip")
                except LookupError:
                    missing.append(resource.split("/")[1])
        if missing:
            raise CaptionDataMissing(
                f"NLTK data missing: {', '.join(missing)}. Install it with `{DOWNLOAD_COMMAND}` "
                f"or point NLTK_DATA at a folder that has it (searched: {', '.join(nltk.data.path)}). "
                "Records with explicit objects1/objects2 lists do not need it."
            )
        lemmatizer = WordNetLemmatizer()
        lemmatizer.lemmatize("warm")  # load WordNet now, not inside the first pair
        self.lemmatize = functools.lru_cache(maxsize=65536)(lemmatizer.lemmatize)
        tagger = PerceptronTagger()  # nltk.pos_tag's English tagger

        @functools.lru_cache(maxsize=65536)
        def tag(word: str) -> str:
            return tagger.tag([word])[0][1]

        self.tag = tag

    @classmethod
    def get(cls) -> "_Nltk":
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance


def ensure_available() -> None:
    """Load NLTK's data now; raises CaptionDataMissing with the fix when it is not installed."""
    _Nltk.get()


def objects_from_captions(caption1: str, caption2: str) -> tuple[list[str], list[str]]:
    """S2: (objects1, objects2) from the two captions (see the module docstring)."""
    nltk_ = _Nltk.get()
    only1: list[str] = []
    only2: list[str] = []
    for line in difflib.Differ().compare(caption_words(caption1), caption_words(caption2)):
        if line.startswith("+"):
            only2.append(nltk_.lemmatize(line.replace("+ ", "")))
        elif line.startswith("-"):
            only1.append(nltk_.lemmatize(line.replace("- ", "")))
    objects1 = [w for w in only1 if w not in only2 and nltk_.tag(w) in NOUN_TAGS]
    objects2 = [w for w in only2 if w not in only1 and nltk_.tag(w) in NOUN_TAGS]
    return objects1, objects2
