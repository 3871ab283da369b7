"""Held-out attribute combinations of the procedural scenes (``modality.holdout``), torch-free.

A text conditioner that only ever sees its training captions is not shown to
*compose*: "a small red star on the left" may be recalled, not understood. With
``modality.holdout`` chosen pairs of words never meet in training:

* a pair is two words of two different attributes of :data:`.shapes.ATTRIBUTES`
  joined by a colon, in either order: ``star:red`` (shape and colour),
  ``ring:left`` (shape and place; places are ``left``, ``middle``, ``right``),
  ``magenta:large`` (colour and size), ...;
* a scene is *held out* when it has both words of some pair: the ``train`` split
  holds every other scene, the ``val`` split exactly the held-out ones, so the
  held-out captions are new sentences made of words the model was trained on.

:func:`check_holdout` refuses a pair that names an unknown word, joins two words
of one attribute, or (with the pairs before it) leaves some word with no
combination in training at all (e.g. ``star:left star:middle star:right``: no
star would remain).
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

from .shapes import ATTRIBUTES

#: Word -> its attribute (``"red" -> "colour"``).
WORDS = {word: attribute for attribute, words in ATTRIBUTES.items() for word in words}

#: The key the errors name.
KEY = "modality.holdout"

#: A held-out pair: ``{attribute: word}`` with two entries.
Pair = Mapping[str, str]


def _choices() -> str:
    return "; ".join(f"{attribute}s: {', '.join(words)}" for attribute, words in ATTRIBUTES.items())


def parse_pair(text: str, key: str = KEY) -> dict[str, str]:
    """``"star:red"`` -> ``{"shape": "star", "colour": "red"}``; ``ValueError`` naming ``key`` and ``text``
    when it is not two known words of different attributes joined by ``:``."""
    parts = str(text).strip().lower().split(":")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{key}: '{text}' is not a pair '<word>:<word>' of two scene attributes "
                         f"(e.g. star:red, ring:left, magenta:large)")
    for word in parts:
        if word not in WORDS:
            raise ValueError(f"{key}: '{text}' names '{word}', which is no scene word ({_choices()})")
    a, b = (WORDS[w] for w in parts)
    if a == b:
        raise ValueError(f"{key}: '{text}' joins two {a}s; a pair joins words of two different attributes "
                         "(e.g. star:red, ring:left)")
    return {a: parts[0], b: parts[1]}


def is_held_out(attributes: Mapping[str, str], pairs: Sequence[Pair]) -> bool:
    """Whether a scene with ``attributes`` (``{"shape", "colour", "size", "place"}``) has both words of a pair."""
    return any(all(attributes.get(k) == v for k, v in pair.items()) for pair in pairs)


def _missing_words(pairs: Sequence[Pair]) -> list[str]:
    """The words no combination of the full attribute grid outside ``pairs`` has."""
    seen: set[str] = set()
    for combo in itertools.product(*ATTRIBUTES.values()):
        scene = dict(zip(ATTRIBUTES, combo))
        if not is_held_out(scene, pairs):
            seen.update(combo)
    return [w for w in WORDS if w not in seen]


def check_holdout(holdout: Sequence[str], key: str = KEY) -> list[dict[str, str]]:
    """The parsed pairs of ``holdout`` (:func:`parse_pair`); ``ValueError`` naming ``key`` and the pair when one
    is malformed, names an unknown word, or, with the pairs before it, would leave a word in no training
    combination (checked over every combination of the attributes, so it holds for any data)."""
    pairs: list[dict[str, str]] = []
    for text in holdout:
        pair = parse_pair(text, key)
        missing = _missing_words([*pairs, pair])
        if missing:
            raise ValueError(f"{key}: '{text}' would leave no training scene with the {WORDS[missing[0]]} "
                             f"'{missing[0]}' (with the pairs before it every combination with it is held out); "
                             "each word must keep some partner in training")
        pairs.append(pair)
    return pairs


def check_split_words(train: Sequence[Mapping[str, str]], val_count: int, holdout: Sequence[str],
                      num_samples: int, key: str = KEY) -> None:
    """``ValueError`` when the scenes of the data leave a word out of the ``train`` split (too few scenes for
    the pairs: each word must appear in training) or hold none out (``val_count == 0``)."""
    if val_count == 0:
        raise ValueError(f"{key}={list(holdout)}: none of the modality.num_samples={num_samples} scenes has a "
                         "held-out pair; raise num_samples or choose other pairs")
    seen = {word for attributes in train for word in attributes.values()}
    missing = [w for w in WORDS if w not in seen]
    if missing:
        raise ValueError(f"{key}={list(holdout)}: with modality.num_samples={num_samples} no training scene has the "
                         f"{WORDS[missing[0]]} '{missing[0]}'; raise num_samples so every word appears in training")
