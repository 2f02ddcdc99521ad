"""Law books: shipped, editable, versioned, and checked with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_llm import SpecError
from slurm_llm.tribunal import LawBook, law_books


def test_the_shipped_academic_book() -> None:
    book = LawBook.named("academic")
    assert "academic" in law_books()
    assert [law.id for law in book.laws] == [
        "formal-language",
        "logical-rigour",
        "cite-the-context",
    ]
    assert book.laws[2].check and book.version == "1"


def test_a_book_can_be_narrowed_to_some_laws() -> None:
    book = LawBook.named("academic").only(["logical-rigour"])
    assert [law.id for law in book.laws] == ["logical-rigour"]
    with pytest.raises(SpecError, match="unknown law"):
        LawBook.named("academic").only(["no-such-law"])


def test_repeated_ids_and_missing_texts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\n[[laws]]\nid = "a"\ntext = "x"\n[[laws]]\nid = "a"\ntext = "y"\n'
    )
    with pytest.raises(SpecError, match="repeated: a"):
        LawBook.from_file(path)
    path.write_text('name = "mine"\n[[laws]]\nid = "a"\n')
    with pytest.raises(SpecError, match=r"laws\.0\.text"):
        LawBook.from_file(path)


def test_an_unknown_book_lists_the_shipped_ones() -> None:
    with pytest.raises(SpecError, match="shipped ones: academic"):
        LawBook.named("no-such-book")
