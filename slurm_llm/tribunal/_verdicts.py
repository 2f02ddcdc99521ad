"""A critic's verdict, read from whatever the model wrote.

Critics are asked for a JSON object, ``{"verdict": "pass" | "fail", "reasons": "..."}``, but
small models answer with prose, half a JSON object, "PASS." or "The answer fails because...".
The reader tries, in order: a JSON object with a verdict, then the first word that says pass or
fail. Text that says neither is an abstention (``passed is None``): it neither fails an answer
nor lets a garbled critic pass it silently, and it is reported as such. Reading never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# "yes" and "no" are missing on purpose: they answer the law's check question, whose polarity
# varies ("Does the answer contain slang?").
PASS_WORDS = ("pass", "passes", "passed", "compliant", "complies", "satisfies", "true")
FAIL_WORDS = ("fail", "fails", "failed", "violates", "violation", "non-compliant", "false")
NEGATIONS = ("not", "never", "doesn't", "isn't", "does-not")
_WORD = re.compile(r"[a-z][a-z'-]*")
_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    law: str
    passed: bool | None  # None: the critic's text said neither
    reasons: str
    raw: str

    @property
    def outcome(self) -> str:
        return {True: "pass", False: "fail", None: "abstain"}[self.passed]


def read_verdict(law: str, text: str) -> Verdict:
    for candidate in _OBJECT.findall(text):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("verdict"), str | bool):
            passed = _word_verdict(str(data["verdict"]).lower())
            if passed is not None:
                return Verdict(law, passed, str(data.get("reasons", "")).strip(), text)
    passed = _word_verdict(text.lower())
    return Verdict(law, passed, _reasons(text), text)


def _word_verdict(text: str) -> bool | None:
    """The first pass or fail word; "does not pass" and "not compliant" are fails."""
    previous = ""
    for word in _WORD.findall(text):
        if word in PASS_WORDS:
            return previous not in NEGATIONS
        if word in FAIL_WORDS:
            return previous in NEGATIONS and word != "non-compliant"
        previous = word
    return None


def _reasons(text: str) -> str:
    """The text after a "reasons:"-like label, else all of it, on one line."""
    match = re.search(r"reasons?\s*[:\-]\s*(.+)", text, re.IGNORECASE | re.DOTALL)
    return " ".join((match.group(1) if match else text).split())[:1000]
