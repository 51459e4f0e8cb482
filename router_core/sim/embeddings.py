"""Deterministic embeddings for the simulator: paraphrases land close, unrelated texts far apart.

No model behind it: a text becomes a bag of normalised content words, feature-hashed into the
requested number of dimensions. What counts as a paraphrase is exactly this: two texts whose
content words are the same after these steps, in any order, case or punctuation.

1. Lowercase; expand common contractions ("what's" → "what is", "don't" → "do not", "i'm" → "i am").
2. Split into words of letters and digits; every other character (punctuation) separates words.
3. Drop stopwords (`STOPWORDS`): articles, pronouns, auxiliaries, prepositions, question words and
   conversational filler ("please", "tell", "me", "could", "can", "you", "what", "is", "the"...).
4. Light stemming (`stem`): plural "-ies" → "-y", "-es" after s/x/z/ch/sh, "-s"; "-ing" and "-ed"
   (a doubled final consonant undone: "running" → "run"); a final "e" dropped so "purchase",
   "purchased" and "purchasing" meet.
5. Synonyms (`SYNONYM_GROUPS`): each word of a group is replaced by the group's first word
   (big/large/huge, car/automobile, quick/fast, begin/start, buy/purchase...), after stemming both.
6. Each distinct content word is a feature; so is each character trigram of it (with word
   boundaries), which keeps near-spellings ("colour"/"color") near. Features are hashed with
   BLAKE2b (stable across processes, unlike `hash()`) to four places, each with a sign. The word part and
   the trigram part are each normalised, then mixed with the trigram part at `TRIGRAM_SHARE` of the
   squared length, and the sum is normalised to unit length.

So a paraphrase has cosine 1.0 with the original (the same bag of words), texts sharing no content
word only what hash collisions and shared trigrams give (near 0), and replacing one content word of
eight gives about 0.87. A text with no content word at all ("what is it?") keeps its stopwords, and
one with no word at all (punctuation) is hashed whole, so every non-empty text has a vector.
Vectors are rounded to float32, as the OpenAI API sends them, so the float and base64 encodings agree.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import sys
from array import array
from collections.abc import Iterable

__all__ = [
    "STOPWORDS",
    "SYNONYM_GROUPS",
    "TRIGRAM_SHARE",
    "content_words",
    "embed",
    "encode_base64",
    "stem",
]

TRIGRAM_SHARE = 0.15
"""Share of a vector's squared length given to character trigrams; the rest is whole words."""

_SLOTS = 4  # places each feature is hashed to

_CONTRACTIONS = {
    "what's": "what is",
    "that's": "that is",
    "it's": "it is",
    "there's": "there is",
    "here's": "here is",
    "who's": "who is",
    "where's": "where is",
    "how's": "how is",
    "let's": "let us",
    "can't": "can not",
    "won't": "will not",
    "n't": " not",
    "'m": " am",
    "'re": " are",
    "'ve": " have",
    "'ll": " will",
    "'d": " would",
}
_CONTRACTION = re.compile("|".join(re.escape(c) for c in sorted(_CONTRACTIONS, key=len, reverse=True)))
_WORD = re.compile(r"[a-z0-9]+")

_STOPWORD_LINES = """
    a an the this that these those some any each every
    i me my mine we us our you your yours he him his she her it its they them their
    is am are was were be been being do does did done doing have has had having
    will would shall should can could may might must not no
    what which who whom whose when where why how whether
    of in on at to from by for with about as into onto over under between through
    and or but if then than so too very just also only
    please tell explain show give let know like want need wondering wonder kindly
    hi hello hey thanks thank ok okay well really
    there here out up down off again
"""
STOPWORDS = frozenset(_STOPWORD_LINES.split())
"""Words that carry no content here: they never count towards similarity (step 3)."""

SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("big", "large", "huge", "enormous"),
    ("small", "little", "tiny"),
    ("car", "automobile", "auto"),
    ("fast", "quick", "rapid", "speedy", "swift"),
    ("begin", "start", "commence"),
    ("end", "finish", "stop"),
    ("buy", "purchase"),
    ("make", "create", "build"),
    ("fix", "repair"),
    ("error", "mistake", "bug"),
    ("cheap", "inexpensive"),
    ("happy", "glad"),
    ("answer", "reply", "response"),
    ("help", "assist"),
    ("use", "utilize"),
    ("get", "obtain"),
    ("home", "house"),
    ("doctor", "physician"),
    ("film", "movie"),
    ("summary", "summarize", "summarise"),
)
"""Words that mean the same here; each is read as its group's first word (step 5)."""


def stem(word: str) -> str:
    """A light suffix stripper (step 4): plurals, -ing, -ed and a final e; short words kept."""
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    elif word.endswith("ing") and _has_vowel(word[:-3]):
        word = _undouble(word[:-3])
    elif word.endswith("ed") and not word.endswith("eed") and _has_vowel(word[:-2]):
        word = _undouble(word[:-2])
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def _has_vowel(word: str) -> bool:
    """A stem worth cutting to: "string" and "red" keep their ending."""
    return len(word) >= 3 and any(c in "aeiouy" for c in word)


def _undouble(word: str) -> str:
    """`runn` → `run`, `stopp` → `stop`; `fall` and `miss` keep their pair."""
    if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "lsz" and word[-1] not in "aeiou":
        return word[:-1]
    return word


_SYNONYMS = {stem(word): stem(group[0]) for group in SYNONYM_GROUPS for word in group}


def content_words(text: str) -> list[str]:
    """The text's distinct content words after steps 1-5, in first-seen order."""
    words = _WORD.findall(_expand(text.lower()))
    terms = [_SYNONYMS.get(s, s) for s in (stem(w) for w in words if w not in STOPWORDS)]
    return list(dict.fromkeys(terms))


def _expand(text: str) -> str:
    text = text.replace("\u2019", "'")  # a typographic apostrophe is the same contraction
    return _CONTRACTION.sub(lambda m: _CONTRACTIONS[m.group()], text)


def _features(text: str) -> list[str]:
    """The words to hash: content words, else all words, else the whole text."""
    terms = content_words(text)
    if terms:
        return terms
    words = _WORD.findall(_expand(text.lower()))
    return list(dict.fromkeys(words)) or [text]


def _trigrams(words: Iterable[str]) -> list[str]:
    grams: list[str] = []
    for word in words:
        padded = f"^{word}$"
        grams.extend(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


def _hashed(features: Iterable[str], dimensions: int, salt: bytes) -> list[float]:
    """Signed feature hashing into `_SLOTS` places per feature, normalised; zeros if no feature.

    Several places per feature keep one unlucky collision from weighing a whole feature.
    """
    vector = [0.0] * dimensions
    for feature in features:
        digest = hashlib.blake2b(feature.encode(), digest_size=4 * _SLOTS, person=salt).digest()
        for slot in range(_SLOTS):
            value = int.from_bytes(digest[4 * slot : 4 * slot + 4], "little")
            vector[(value >> 1) % dimensions] += 1.0 if value & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def embed(text: str, dimensions: int) -> list[float]:
    """The unit-length embedding of a non-empty `text`, as float32 values (see the module docstring).

    Args:
        text: The text; an empty string is the caller's to refuse (OpenAI answers 400).
        dimensions: The vector's length (>= 1).
    """
    words = _features(text)
    whole = _hashed(words, dimensions, b"routeq-word")
    grams = _hashed(_trigrams(words), dimensions, b"routeq-tri")
    a, b = math.sqrt(1 - TRIGRAM_SHARE), math.sqrt(TRIGRAM_SHARE)
    mixed = [a * w + b * g for w, g in zip(whole, grams, strict=True)]
    norm = math.sqrt(sum(x * x for x in mixed)) or 1.0
    return array("f", (x / norm for x in mixed)).tolist()


def encode_base64(vector: list[float]) -> str:
    """`vector` as OpenAI's `encoding_format: "base64"` sends it: little-endian float32 bytes."""
    packed = array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()
