"""The two NLTK calls of the caption step, on tables from NLTK's data files, without importing nltk.

- `lemmatize(word)` == `nltk.stem.WordNetLemmatizer().lemmatize(word)` (noun): WordNet's morphy
  for nouns (the exception list, else the suffix rules applied once), keep the forms, the word
  itself first, that are noun lemmas in WordNet's index; return the shortest, else the word.
- `tag(word)` == `nltk.pos_tag([word])[0][1]`: the averaged-perceptron tagger on a one-word
  sentence (the tag dictionary first, else the perceptron on the features of a word with
  -START- before and -END- after it, scores summed in NLTK's order, ties broken by label).

Only the noun index and the tagger tables are loaded, a fraction of the memory of `import nltk`
plus its WordNet reader (see captions.py). They ship with the package (data/caption_data.json.gz,
with its provenance and licences beside it); NLTK's own files are read only to build and check it.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import sys
import threading
import zipfile
from collections import defaultdict
from pathlib import Path

from ..errors import CaptionDataError

DOWNLOAD_COMMAND = "python -m nltk.downloader wordnet averaged_perceptron_tagger_eng"
WORDNET = "corpora/wordnet"
TAGGER = "taggers/averaged_perceptron_tagger_eng"
TAGGER_FILES = tuple(f"averaged_perceptron_tagger_eng.{part}.json" for part in ("weights", "tagdict", "classes"))

# WordNet's morphological rules for nouns (nltk WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS)
NOUN_SUBSTITUTIONS = (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"))
PACKAGED_DATA = Path(__file__).resolve().parents[1] / "data" / "caption_data.json.gz"
PACKAGED_FORMAT = "imgdiff-onnx-caption-data/1"
START = ("-START-", "-START2-")
END = ("-END-", "-END2-")


class CaptionDataMissing(CaptionDataError):
    """NLTK's WordNet or POS tagger data is not installed (or cannot be read)."""


def nltk_data_path() -> list[Path]:
    """Where NLTK looks for its data, in its order (nltk.data.path on a POSIX system)."""
    paths = [Path(os.path.expanduser(d)) for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]
    if "APPENGINE_RUNTIME" not in os.environ and os.path.expanduser("~/") != "~/":
        paths.append(Path(os.path.expanduser("~/nltk_data")))
    prefix = Path(sys.prefix)
    paths += [prefix / "nltk_data", prefix / "share" / "nltk_data", prefix / "lib" / "nltk_data"]
    paths += [Path(p) for p in ("/usr/share/nltk_data", "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data")]
    return paths


class _Resource:
    """One NLTK data package: a folder `<root>/<name>/` or a zip `<root>/<name>.zip`."""

    def __init__(self, name: str, roots: list[Path]):
        self.name = name
        for root in roots:
            folder, archive = root / name, root / f"{name}.zip"
            if folder.is_dir():
                self.folder, self.archive = folder, None
                return
            if archive.is_file():
                self.folder, self.archive = None, archive
                return
        raise LookupError(name)  # internal: Lexicon turns it into CaptionDataMissing naming what is missing

    def read_text(self, member: str) -> str:
        try:
            if self.folder is not None:
                return (self.folder / member).read_text(encoding="utf-8")
            with zipfile.ZipFile(self.archive) as zf:
                return zf.read(f"{Path(self.name).name}/{member}").decode("utf-8")
        except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
            where = self.folder or self.archive
            raise CaptionDataMissing(f"cannot read {member} of NLTK data {self.name} at {where}: {exc}. Reinstall it with `{DOWNLOAD_COMMAND}`") from None


class Lexicon:
    """WordNet's noun index and exceptions and the English POS tagger, loaded once per process.

    `Lexicon.get()` reads the tables this package ships (`imgdiff_onnx/data/`, derived from the
    same NLTK data by `python -m imgdiff_onnx_export.caption_data`: see data/CAPTION_DATA.md), so
    no NLTK data has to be installed. `Lexicon(roots)` reads NLTK's own files from `roots` (the
    build step and the tests, which check the two give the same words and tags).
    """

    _lock = threading.Lock()
    _instance: "Lexicon | None" = None

    def __init__(self, roots: list[Path] | None = None):
        roots = nltk_data_path() if roots is None else roots
        found, missing = {}, []
        for name in (WORDNET, TAGGER):
            try:
                found[name] = _Resource(name, roots)
            except LookupError:
                missing.append(name.split("/")[1])
        if missing:
            raise CaptionDataMissing(
                f"NLTK data missing: {', '.join(missing)}. Install it with `pip install nltk && {DOWNLOAD_COMMAND}` "
                f"or point NLTK_DATA at a folder that has it (searched: {', '.join(map(str, roots))})."
            )
        wordnet, tagger = found[WORDNET], found[TAGGER]
        nouns, exceptions = _noun_lemmas(wordnet.read_text("index.noun")), _exceptions(wordnet.read_text("noun.exc"))
        try:
            weights, tagdict, classes = (json.loads(tagger.read_text(f)) for f in TAGGER_FILES)
        except json.JSONDecodeError as exc:
            raise CaptionDataMissing(f"NLTK data {TAGGER} is corrupt ({exc}). Reinstall it with `{DOWNLOAD_COMMAND}`") from None
        self._set_tables(nouns, exceptions, weights, tagdict, classes)

    def _set_tables(self, nouns: frozenset[str], exceptions: dict[str, list[str]], weights: dict[str, dict[str, float]],
                    tagdict: dict[str, str], classes: list[str]) -> None:  # fmt: skip
        self._nouns = nouns
        self._noun_exceptions = exceptions
        self._weights = weights
        self._tagdict = tagdict
        self._classes = sorted(classes)
        self.lemmatize = functools.lru_cache(maxsize=65536)(self._lemmatize)
        self.tag = functools.lru_cache(maxsize=65536)(self._tag)

    @classmethod
    def packaged(cls, path: Path | None = None) -> "Lexicon":
        """The tables shipped in this package (or at `path`)."""
        path = PACKAGED_DATA if path is None else path
        try:
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                data = json.load(handle)
            if data.get("format") != PACKAGED_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {PACKAGED_FORMAT!r}")  # internal: Lexicon.packaged turns it into CaptionDataMissing
            tagger = data["tagger"]
            lexicon = cls.__new__(cls)
            lexicon._set_tables(frozenset(data["noun_lemmas"]), data["noun_exceptions"], tagger["weights"], tagger["tagdict"], tagger["classes"])
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise CaptionDataMissing(f"the caption data shipped with imgdiff_onnx ({path}) cannot be read ({exc}); reinstall the package") from None
        return lexicon

    @classmethod
    def get(cls) -> "Lexicon":
        if cls._instance is None:
            with cls._lock:
                if cls._instance is None:
                    cls._instance = cls.packaged()
        return cls._instance

    def noun_lemmas(self, word: str) -> list[str]:
        """WordNet's _morphy(word, 'n'): the word and its rule (or exception) forms that are noun lemmas."""
        if word in self._noun_exceptions:
            forms = self._noun_exceptions[word]
        else:
            forms = [word[: -len(old)] + new for old, new in NOUN_SUBSTITUTIONS if word.endswith(old)]
        result: list[str] = []
        for form in [word, *forms]:
            if form in self._nouns and form not in result:
                result.append(form)
        return result

    def _lemmatize(self, word: str) -> str:
        lemmas = self.noun_lemmas(word)
        return min(lemmas, key=len) if lemmas else word

    def _tag(self, word: str) -> str:
        tag = self._tagdict.get(word)
        if tag:
            return tag
        scores: dict[str, float] = defaultdict(float)
        for feature in _one_word_features(word):
            for label, weight in self._weights.get(feature, {}).items():
                scores[label] += weight
        return max(self._classes, key=lambda label: (scores[label], label))


def _noun_lemmas(index_text: str) -> frozenset[str]:
    """The lemmas of index.noun (licence lines start with a space)."""
    lemmas = set()
    for line in index_text.splitlines():
        if line.startswith(" "):
            continue
        tokens = line.split()
        if len(tokens) >= 2 and tokens[1] == "n":
            lemmas.add(tokens[0])
    return frozenset(lemmas)


def _exceptions(exc_text: str) -> dict[str, list[str]]:
    out = {}
    for line in exc_text.splitlines():
        terms = line.split()
        if terms:
            out[terms[0]] = terms[1:]
    return out


def _normalize(word: str) -> str:
    if "-" in word and word[0] != "-":
        return "!HYPHEN"
    if word.isdigit() and len(word) == 4:
        return "!YEAR"
    if word and word[0].isdigit():
        return "!DIGITS"
    return word.lower()


def _one_word_features(word: str) -> list[str]:
    """PerceptronTagger._get_features for a one-word sentence, in NLTK's order (every value 1)."""
    context = [*START, _normalize(word), *END]
    prev, prev2 = START
    i = 2
    return [
        "bias",
        f"i suffix {word[-3:]}",
        f"i pref1 {word[0] if word else ''}",
        f"i-1 tag {prev}",
        f"i-2 tag {prev2}",
        f"i tag+i-2 tag {prev} {prev2}",
        f"i word {context[i]}",
        f"i-1 tag+i word {prev} {context[i]}",
        f"i-1 word {context[i - 1]}",
        f"i-1 suffix {context[i - 1][-3:]}",
        f"i-2 word {context[i - 2]}",
        f"i+1 word {context[i + 1]}",
        f"i+1 suffix {context[i + 1][-3:]}",
        f"i+2 word {context[i + 2]}",
    ]
