"""Latin lookalikes from other scripts: a skeleton for the detector, and mixed-script words.

"paypal" spelled with a Cyrillic "a" (U+0430) reads as "paypal" to a person and as a
different word to a regular expression. Two uses follow:

* :func:`skeleton` maps every lookalike to the Latin letter it imitates, so the
  detector's rules see "ignore previous instructions" written with a Cyrillic "i"
  (U+0456) as what it says.
  It is for detection only: applied to the text a person reads it would destroy
  legitimate Cyrillic or Greek, so the visible text keeps its letters.
* :func:`mixed_script_words` finds words that mix Latin letters with lookalikes from
  another script and whose skeleton is a plain Latin word. A Russian word with one
  stray Latin letter (a keyboard-layout slip) keeps non-Latin letters in its skeleton
  and is not reported; a Latin word disguised with one Cyrillic letter is.

The table is deliberately small, the common lookalikes of Cyrillic, Greek, Armenian and
a few Latin-extended letters, after the spirit of Unicode's confusables.txt (UTS #39)
but without its thousands of entries that would need the full data file to stay
correct. Digits and punctuation are out of scope.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# lookalike -> the ASCII letter it imitates: Cyrillic, Greek, Armenian, then Latin extended
# (dotless i, Latin alpha, Latin iota, dental click)
LOOKALIKES: dict[str, str] = {
    # Cyrillic lower case
    "\u0430": "a",
    "\u0432": "b",
    "\u0435": "e",
    "\u0451": "e",
    "\u043a": "k",
    "\u043c": "m",
    "\u043d": "h",
    "\u043e": "o",
    "\u0440": "p",
    "\u0441": "c",
    "\u0442": "t",
    "\u0443": "y",
    "\u0445": "x",
    "\u0456": "i",
    "\u0457": "i",
    "\u0458": "j",
    "\u0455": "s",
    "\u0501": "d",
    "\u051b": "q",
    "\u051d": "w",
    "\u04bb": "h",
    "\u04cf": "l",
    "\u0261": "g",
    "\u050d": "g",
    "\u0475": "v",
    # Cyrillic upper case
    "\u0410": "A",
    "\u0412": "B",
    "\u0415": "E",
    "\u041a": "K",
    "\u041c": "M",
    "\u041d": "H",
    "\u041e": "O",
    "\u0420": "P",
    "\u0421": "C",
    "\u0422": "T",
    "\u0423": "Y",
    "\u0425": "X",
    "\u0406": "I",
    "\u0408": "J",
    "\u0405": "S",
    "\u04c0": "I",
    # Greek
    "\u03b1": "a",
    "\u03bf": "o",
    "\u03c1": "p",
    "\u03bd": "v",
    "\u03b9": "i",
    "\u03ba": "k",
    "\u03c5": "u",
    "\u03c7": "x",
    "\u0391": "A",
    "\u0392": "B",
    "\u0395": "E",
    "\u0396": "Z",
    "\u0397": "H",
    "\u0399": "I",
    "\u039a": "K",
    "\u039c": "M",
    "\u039d": "N",
    "\u039f": "O",
    "\u03a1": "P",
    "\u03a4": "T",
    "\u03a5": "Y",
    "\u03a7": "X",
    "\u0585": "o",
    "\u057d": "u",
    "\u0570": "h",
    "\u0578": "n",
    "\u0563": "q",
    # Looser lookalikes, as seen in homograph hosts (lowercase IDNA labels)
    "\u044c": "b",  # soft sign
    "\u0433": "r",  # ghe
    "\u043f": "n",  # pe
    "\u03c4": "t",  # tau
    "\u03b5": "e",  # epsilon
    "\u03f2": "c",  # lunate sigma
    # Latin extended that passes for plain Latin
    "\u0131": "i",
    "\u0251": "a",
    "\u0269": "i",
    "\u01c0": "l",
}

_TABLE = str.maketrans(LOOKALIKES)
_WORD = re.compile(r"[^\W\d_]{2,64}")
MAX_WORDS_REPORTED = 8


def skeleton(text: str) -> str:
    """``text`` with each lookalike replaced by the Latin letter it imitates (detection only)."""
    return text.translate(_TABLE)


@lru_cache(maxsize=4096)
def _script(char: str) -> str:
    """The first word of the character's Unicode name: LATIN, CYRILLIC, GREEK, ..."""
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else ""


def is_disguised_latin(word: str) -> bool:
    """True when ``word`` mixes Latin with lookalikes and its skeleton is plain ASCII Latin."""
    if word.isascii() or not any(c in LOOKALIKES for c in word):
        return False
    if not any(c.isascii() and c.isalpha() for c in word):
        return False
    folded = skeleton(word)
    return folded.isascii() and folded.isalpha()


def mixed_script_words(text: str, limit: int = MAX_WORDS_REPORTED) -> list[str]:
    """Distinct words that are Latin words disguised with lookalikes, at most ``limit``."""
    found: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group()
        if word not in found and is_disguised_latin(word):
            found.append(word)
            if len(found) >= limit:
                break
    return found


def is_mixed_script_label(label: str) -> bool:
    """For link hosts: one DNS label (already Unicode, not punycode) mixes scripts.

    Digits and hyphens belong to no script. A label written wholly in one non-Latin
    script (a real Cyrillic domain) is not mixed; "xn--" decoding is the caller's job.
    """
    scripts = {_script(c) for c in label if c.isalpha()}
    return len(scripts) > 1
