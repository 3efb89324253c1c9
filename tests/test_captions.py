"""S2 objects from captions: pinned, hand-checked expectations; NLTK called directly as a cross-check."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile

import pytest

from imgdiff_onnx.engine.captions import caption_words, objects_from_captions
from imgdiff_onnx.engine.lexicon import TAGGER, TAGGER_FILES, WORDNET, CaptionDataMissing, Lexicon, _Resource, nltk_data_path

from .conftest import SHARED

# the suite runs on pytest-xdist workers: this file's tests stay on one worker, which loads NLTK's
# WordNet (seconds) once for all of them
pytestmark = pytest.mark.xdist_group("captions")

# (caption1, caption2, objects1, objects2). Notes on the original's edge cases, kept on purpose:
# - several spaces in a row make empty words, and "" tags as NN, so it becomes an "object";
# - tabs are not split on ("bear\tin" stays one word); punctuation is deleted, so "well-known"
#   becomes "wellknown" and numbers stay words (tagged CD, so never objects);
# - single-word tagging: "beside" tags NN; lemmas are noun lemmas ("mice" -> "mouse", "feet" -> "foot").
PINNED = [
    ('A plane in the sky flying alone.', 'A boat in the ocean sailing alone.', ['plane', 'sky'], ['boat', 'ocean']),
    ('A cat sitting on a sofa.', 'A dog sitting on a sofa.', ['cat'], ['dog']),
    ('Two cats on the bed.', 'Two dogs on the bed.', ['cat'], ['dog']),
    ('Three mice in a box.', 'Three geese in a box.', ['mouse'], ['goose']),
    ('The children play with a ball.', 'The women play with a ball.', ['child'], ['woman']),
    ('A red car parked on the street.', 'A red car parked on the street.', [], []),
    ('', 'A boat on the lake.', [], ['boat', 'lake']),
    ('A boat on the lake.', '', ['boat', 'lake'], []),
    ('A dog and a dog and a cat.', 'A bird and a bird and a cat.', ['dog', 'dog'], ['bird', 'bird']),
    ('A cat, a dog; and a bird!', 'A cat, a fish; and a bird!', ['dog'], ['fish']),
    ('3 apples on 2 plates.', '3 oranges on 2 plates.', ['apple'], ['orange']),
    ('A well-known tower at night.', 'A well-known bridge at night.', ['tower'], ['bridge']),
    ('A café in Paris.', 'A bakery in Paris.', ['café'], ['bakery']),
    ('A man.', 'A man riding a horse along the beach at sunset with a dog running beside him.', [], ['horse', 'beach', 'sunset', 'dog', 'beside']),
    ('A cat  on  a mat.', 'A dog on a mat.', ['cat', '', ''], ['dog']),
    ('...', '!!!', [], []),
    ('A   ', '   ', [], ['']),
    ('Apples and bananas.', 'Bananas and apples.', [], []),
    ('A glass of water on the table.', 'A glass of wine on the table.', ['water'], ['wine']),
    ('A bus driving down the road.', 'A truck driving down the road.', ['bus'], ['truck']),
    ('The leaves are green.', 'The leaves are red.', [], []),
    ('A man is running.', 'A man is walking.', [], []),
    ('Boxes stacked in the corner.', 'Crates stacked in the corner.', ['box'], ['crate']),
    ('A wolf howling at the moon.', 'A wolf howling at the sun.', ['moon'], ['sun']),
    ('People walking in the park.', 'Ducks walking in the park.', ['people'], ['duck']),
    ('An umbrella in the rain.', 'A kite in the wind.', ['umbrella', 'rain'], ['kite', 'wind']),
    ('A Tesla in the garage.', 'A Ferrari in the garage.', ['tesla'], ['ferrari']),
    ('A knife next to the bread.', 'A fork next to the bread.', ['knife'], ['fork']),
    ('Teeth of a shark.', 'Teeth of a lion.', ['shark'], ['lion']),
    ('Feet in the sand.', 'Hands in the sand.', ['foot'], ['hand']),
    ('A photo of New York.', 'A photo of Los Angeles.', ['york'], ['los', 'angeles']),
    ('A bear\tin the woods.', 'A deer in the woods.', ['bear\tin'], ['deer']),
]


@pytest.mark.parametrize("caption1,caption2,objects1,objects2", PINNED)
def test_pinned_objects(caption1, caption2, objects1, objects2):
    assert objects_from_captions(caption1, caption2) == (objects1, objects2)


@pytest.mark.parametrize("caption1,caption2,objects1,objects2", PINNED)
def test_same_as_calling_nltk_directly(caption1, caption2, objects1, objects2):
    from benchmarks.reference import reference_objects

    assert objects_from_captions(caption1, caption2) == reference_objects(caption1, caption2)


def test_word_splitting_rules():
    assert caption_words("A cat  on, the-mat!") == ["a", "cat", "", "on", "themat"]
    assert caption_words("") == []
    assert caption_words("Ünïcode Café") == ["ünïcode", "café"]


def test_fast_after_warm_up():
    objects_from_captions("A cat on a mat.", "A dog on a mat.")  # warm-up: loads WordNet and the tagger
    pairs = [(f"A cat number {i} on a mat.", f"A dog number {i} on a rug.") for i in range(200)]
    started = time.perf_counter()
    for a, b in pairs:
        objects_from_captions(a, b)
    per_pair = (time.perf_counter() - started) / len(pairs)
    # not a speed target (that lives in benchmarks/): a sanity bound 10x above the goal
    assert per_pair < 0.01


def _wordnet_vocabulary() -> list[str]:
    """Every lemma of WordNet's four indexes, each also with "s" and "es" appended, every exception
    form, and the odd words captions produce."""
    wordnet = _Resource(WORDNET, nltk_data_path())
    words: set[str] = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in wordnet.read_text(f"index.{pos}").splitlines():
            if line and not line.startswith(" "):
                lemma = line.split()[0]
                words.update((lemma, lemma + "s", lemma + "es"))
        for line in wordnet.read_text(f"{pos}.exc").splitlines():
            words.update(line.split()[:1])
    words.update(["", "-", "a-b", "-ab", "1999", "12th", "3", "café", "bear\tin", "Tesla", "ÜBER", "x" * 40, "_", "__init__"])
    return sorted(words)


@pytest.mark.slow  # ~60 s: outside the fast tier
def test_lemmatize_and_tag_equal_nltk_on_every_wordnet_lemma():
    """The reimplementation (no nltk import in the runtime) against NLTK itself, word by word."""
    import nltk
    from nltk.stem import WordNetLemmatizer

    lexicon, lemmatizer = Lexicon.get(), WordNetLemmatizer()
    words = _wordnet_vocabulary()
    assert len(words) > 400_000
    lemma_diff = [w for w in words if lexicon.lemmatize(w) != lemmatizer.lemmatize(w)]
    assert lemma_diff == []
    # pos_tag_sents tags each one-word sentence on its own, as nltk.pos_tag([w]) does, with one tagger
    tagged = nltk.pos_tag_sents([[w] for w in words])
    tag_diff = [w for w, sentence in zip(words, tagged) if lexicon.tag(w) != sentence[0][1]]
    assert tag_diff == []


def test_reads_nltk_data_from_zips(tmp_path):
    """nltk.downloader may leave packages zipped; NLTK reads them in place and so do we."""
    source = {WORDNET: _Resource(WORDNET, nltk_data_path()), TAGGER: _Resource(TAGGER, nltk_data_path())}
    for name, resource in source.items():
        assert resource.folder is not None, "the test data is expected as folders"
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as zf:
            for f in resource.folder.iterdir():
                zf.write(f, f"{resource.folder.name}/{f.name}")
    assert not (tmp_path / WORDNET).exists() and not (tmp_path / TAGGER).exists()  # only the zips to read
    zipped, plain = Lexicon([tmp_path]), Lexicon.get()
    for word in ("mice", "geese", "boxes", "churches", "us", "beside", "1999", "café", "walking"):
        assert (zipped.lemmatize(word), zipped.tag(word)) == (plain.lemmatize(word), plain.tag(word))


def test_corrupt_nltk_data_is_a_clear_error(tmp_path):
    shutil.copytree(_Resource(WORDNET, nltk_data_path()).folder, tmp_path / WORDNET)
    (tmp_path / TAGGER).mkdir(parents=True)
    for name in TAGGER_FILES:
        (tmp_path / TAGGER / name).write_text("{not json")
    with pytest.raises(CaptionDataMissing, match="corrupt"):
        Lexicon([tmp_path])
    (tmp_path / WORDNET / "index.noun").unlink()
    with pytest.raises(CaptionDataMissing, match="index.noun"):
        Lexicon([tmp_path])


def test_the_caption_step_needs_no_nltk_data_installed(tmp_path):
    """The tables ship with the package: no NLTK_DATA, no ~/nltk_data, no nltk."""
    code = "from imgdiff_onnx.engine.captions import objects_from_captions\nprint(objects_from_captions('A plane in the sky.', 'A boat in the sea.'))\n"
    env = {"PATH": "/usr/bin:/bin", "NLTK_DATA": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "(['plane', 'sky'], ['boat', 'sea'])", proc.stderr


def test_reading_nltk_files_that_are_missing_names_the_download_command(tmp_path):
    with pytest.raises(CaptionDataMissing) as caught:
        Lexicon([tmp_path])
    assert "python -m nltk.downloader wordnet averaged_perceptron_tagger_eng" in str(caught.value) and "NLTK_DATA" in str(caught.value)


def test_the_shipped_tables_are_rebuilt_byte_for_byte_from_nltk_data(tmp_path):
    from imgdiff_onnx.engine.lexicon import PACKAGED_DATA
    from imgdiff_onnx_export.caption_data import build, one_word_feature, write

    rebuilt = write(build(SHARED / "nltk_data"), tmp_path)
    assert rebuilt.read_bytes() == PACKAGED_DATA.read_bytes()
    assert (PACKAGED_DATA.parent / "LICENSE-WordNet-3.0").read_text() == (SHARED / "nltk_data" / WORDNET / "LICENSE").read_text()
    # the weights left out are those a one-word sentence never produces
    assert one_word_feature("i suffix ane") and one_word_feature("i-1 tag -START-") and not one_word_feature("i+1 word the")


def test_a_damaged_shipped_table_is_a_clear_error(tmp_path):
    broken = tmp_path / "caption_data.json.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(CaptionDataMissing, match="cannot be read.*reinstall the package"):
        Lexicon.packaged(broken)
