"""Verdicts are read from whatever a small model writes, and reading never fails."""

from __future__ import annotations

import pytest

from slurm_llm.tribunal import read_verdict


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        ('{"verdict": "fail", "reasons": "slang"}', "fail"),
        ('Sure! ```json\n{"verdict": "PASS", "reasons": "formal"}\n```', "pass"),
        ('{"verdict": "pass"', "pass"),  # cut off by max_tokens
        ("PASS. The answer is formal.", "pass"),
        ("FAIL: it says 'gonna'.", "fail"),
        ("The answer fails because it uses slang.", "fail"),
        ("The answer is not compliant with the law.", "fail"),
        ("It does not fail the law.", "pass"),
        ("No.", "abstain"),  # answers the check question, whose polarity varies
        ("The sky is blue.", "abstain"),
        ("", "abstain"),
        ("\x00{{{]]] 💥", "abstain"),
    ],
)
def test_messy_critic_output_gives_a_verdict_or_an_abstention(text: str, outcome: str) -> None:
    assert read_verdict("law", text).outcome == outcome


def test_reasons_follow_a_reasons_label_on_one_line() -> None:
    verdict = read_verdict("law", "FAIL\nReasons:  uses\n 'gonna'")
    assert verdict.reasons == "uses 'gonna'"
