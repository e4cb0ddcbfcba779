"""Pretraining text for the embedded base model ``tiny``: simple, English-like, generated.

Lines are one or two templated sentences over a small vocabulary (people, animals,
objects, colours, places, foods, days, numbers written as digits, short word lists and
simple facts), lowercase, 5–25 words. That is varied enough for a ~1 M-parameter model to
learn the language, so held-out perplexity means something, and small enough to learn on
two CPU cores.

The corpus deliberately contains none of the benchmark's task formats (`lorabench.tasks.synthetic`):
no ``tag: ... =`` prompts, no ``:``, ``=``, ``+`` or ``-`` at all, no task tag words and no
sentiment labels or sentiment adjectives. Whatever the adapters learn about the tasks,
they learn from the task train splits alone.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence

NAMES = (
    "anna ben carla dan eva finn gina hugo ida jack kim leo mia nora omar pia quinn rosa sam "
    "tara uma victor wendy xavi yara zoe alex bella chris dora eli fay greg hana ivan june karl "
    "lena max nina otto"
).split()
ANIMALS = (
    "cat dog bird fish horse cow sheep goat duck frog mouse rabbit fox bear owl pig hen lion "
    "wolf deer"
).split()
OBJECTS = (
    "box ball cup book hat lamp chair table bag coat shoe spoon plate bottle clock kite pen "
    "basket blanket bucket drum rope candle mirror brush"
).split()
COLOURS = "red blue green yellow black white brown pink orange purple grey".split()
SIZES = "big small tiny huge little tall heavy round".split()
PLACES = (
    "park garden kitchen school market river forest barn shop library beach hill farm village "
    "station bridge field yard"
).split()
PREPOSITIONS = ("on", "under", "near", "behind", "beside", "next to", "in front of", "inside")
FOODS = "apples bread milk cheese rice eggs beans carrots plums pears honey tea nuts grapes".split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
PAST_VERBS = (
    "saw found took painted carried dropped washed opened closed bought sold hid moved".split()
)
MOTION_VERBS = "ran walked jumped hopped raced wandered climbed swam".split()
ADVERBS = "slowly quickly quietly happily carefully loudly".split()
WORDS = (
    "sun moon star tree leaf rain snow wind sand stone wave cloud road door window wall roof "
    "seed corn bell ring coin shell nest"
).split()

_IRREGULAR_PLURALS = {
    "mouse": "mice",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
    "wolf": "wolves",
}


def plural(noun: str) -> str:
    """The plural of a vocabulary noun (the few irregular ones are listed)."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def article(word: str) -> str:
    """``a`` or ``an``, whichever goes before ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _listing(items: Sequence[str]) -> str:
    """``a, b and c``."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


def _count(rng: random.Random) -> int:
    return rng.randint(2, 99)


# One function per sentence template; each returns a lowercase sentence ending in ".".
def _position(r: random.Random) -> str:
    thing, other = r.sample(OBJECTS, 2)
    return f"the {r.choice(COLOURS)} {thing} is {r.choice(PREPOSITIONS)} the {other}."


def _sighting(r: random.Random) -> str:
    size = r.choice(SIZES)
    return f"{r.choice(NAMES)} saw {article(size)} {size} {r.choice(ANIMALS)} {r.choice(PREPOSITIONS)} the {r.choice(PLACES)}."


def _possession(r: random.Random) -> str:
    return f"{r.choice(NAMES)} has {_count(r)} {r.choice(COLOURS)} {plural(r.choice(OBJECTS))}."


def _census(r: random.Random) -> str:
    return f"there are {_count(r)} {plural(r.choice(ANIMALS))} in the {r.choice(PLACES)}."


def _trip(r: random.Random) -> str:
    first, second = r.sample(NAMES, 2)
    return f"{first} and {second} went to the {r.choice(PLACES)} on {r.choice(DAYS)}."


def _shopping(r: random.Random) -> str:
    foods = _listing(r.sample(FOODS, r.randint(2, 4)))
    return f"{r.choice(NAMES)} bought {foods} at the {r.choice(PLACES)}."


def _motion(r: random.Random) -> str:
    return f"the {r.choice(ANIMALS)} {r.choice(MOTION_VERBS)} {r.choice(ADVERBS)} to the {r.choice(PLACES)}."


def _age(r: random.Random) -> str:
    return (
        f"{r.choice(NAMES)} is {r.randint(3, 90)} years old and lives near the {r.choice(PLACES)}."
    )


def _scene(r: random.Random) -> str:
    size = r.choice(SIZES)
    return (
        f"in the {r.choice(PLACES)} there is a {r.choice(COLOURS)} {r.choice(OBJECTS)}, "
        f"{article(size)} {size} {r.choice(ANIMALS)} and {_count(r)} {plural(r.choice(OBJECTS))}."
    )


def _handling(r: random.Random) -> str:
    thing, other = r.sample(OBJECTS, 2)
    return (
        f"{r.choice(NAMES)} {r.choice(PAST_VERBS)} the {r.choice(COLOURS)} {thing} "
        f"and put it {r.choice(PREPOSITIONS)} the {other}."
    )


def _question(r: random.Random) -> str:
    first, second = r.sample(NAMES, 2)
    return f"{first} asked {second} where the {r.choice(COLOURS)} {r.choice(OBJECTS)} was."


def _preference(r: random.Random) -> str:
    first, second = r.sample(ANIMALS, 2)
    return f"the {first} likes {r.choice(FOODS)}, but the {second} likes {r.choice(FOODS)}."


def _counting(r: random.Random) -> str:
    first, second = r.sample(ANIMALS, 2)
    return (
        f"{r.choice(NAMES)} counted {_count(r)} {plural(first)} and {_count(r)} {plural(second)} "
        f"{r.choice(PREPOSITIONS)} the {r.choice(PLACES)}."
    )


def _word_list(r: random.Random) -> str:
    words = _listing(r.sample(WORDS, r.randint(3, 5)))
    return f"{r.choice(NAMES)} wrote the words {words} on the {r.choice(OBJECTS)}."


def _echo(r: random.Random) -> str:
    """In-context copying (a phrase said twice): lets the small LM form induction heads."""
    phrase = " ".join(r.sample(WORDS + COLOURS, r.randint(2, 4)))
    first, second = r.sample(NAMES, 2)
    return f"{first} said {phrase} and then {second} said {phrase} too."


def _letters(r: random.Random) -> str:
    """Single letters and short letter/digit codes as tokens of their own: the small model
    then knows every token a task answer can use (an untrained output token cannot be
    produced by an adapter that leaves the embeddings frozen)."""
    letters = " ".join(r.sample(string.ascii_lowercase, r.randint(3, 5)))
    code = "".join(r.choices(string.ascii_lowercase + string.digits, k=3))
    return f"{r.choice(NAMES)} wrote the letters {letters} and the code {code} on the {r.choice(OBJECTS)}."


def _routine(r: random.Random) -> str:
    return f"every {r.choice(DAYS)} {r.choice(NAMES)} walks to the {r.choice(PLACES)} with the {r.choice(ANIMALS)}."


def _hours(r: random.Random) -> str:
    opens = r.randint(6, 11)
    return f"the {r.choice(PLACES)} opens at {opens} and closes at {opens + r.randint(5, 11)}."


def _exchange(r: random.Random) -> str:
    first, second = r.sample(NAMES, 2)
    given = _count(r)
    return (
        f"{first} gave {given} {plural(r.choice(OBJECTS))} to {second}, "
        f"who gave {r.randint(1, given)} back."
    )


def _comparison(r: random.Random) -> str:
    first, second = r.sample(ANIMALS, 2)
    colour, other = r.sample(COLOURS, 2)
    return f"the {r.choice(SIZES)} {first} was {colour} and the {second} was {other}."


def _belief(r: random.Random) -> str:
    return (
        f"{r.choice(NAMES)} thinks that the {r.choice(ANIMALS)} is "
        f"{r.choice(PREPOSITIONS)} the {r.choice(OBJECTS)}."
    )


def _weather(r: random.Random) -> str:
    return f"when it rains, {r.choice(NAMES)} stays in the {r.choice(PLACES)} and reads a book."


TEMPLATES: tuple[Callable[[random.Random], str], ...] = (
    _position, _sighting, _possession, _census, _trip, _shopping, _motion, _age, _scene,
    _handling, _question, _preference, _counting, _word_list, _routine, _hours, _exchange,
    _comparison, _belief, _weather, _echo, _echo, _letters, _letters,
)  # fmt: skip


def generate_corpus(seed: int, n_lines: int) -> list[str]:
    """``n_lines`` lines of pretraining text, the same for the same ``seed`` on any machine.

    Each line is one sentence, or two when the first is short (so lines span ~5–25 words).
    """
    # A str seed is hashed stably (sha512), unaffected by PYTHONHASHSEED.
    rng = random.Random(f"lorabench-corpus:{seed}")
    lines = []
    for _ in range(n_lines):
        line = rng.choice(TEMPLATES)(rng)
        if len(line.split()) < 12 and rng.random() < 0.5:
            line += " " + rng.choice(TEMPLATES)(rng)
        lines.append(line)
    return lines


def split_corpus(lines: Sequence[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """``(train, heldout)``: the last ``heldout_fraction`` of ``lines`` is held out.

    Held-out lines that also occur verbatim in the train part are dropped, so held-out
    perplexity measures generalisation, not recall of repeated short sentences.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    cut = len(lines) - max(1, round(len(lines) * heldout_fraction))
    train = list(lines[:cut])
    seen = set(train)
    return train, [line for line in lines[cut:] if line not in seen]
