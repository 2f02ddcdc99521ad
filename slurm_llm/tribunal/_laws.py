"""Laws: named, versioned rules an answer must satisfy, kept in TOML files users edit.

A law has an ``id`` (what verdicts and the log refer to), a ``text`` (the rule, shown to critic
and reviser) and optionally a ``check``: a question that makes the critic's job concrete. A
book's ``version`` goes into every verdict logged, so an answer judged by old laws can be told
from one judged by new ones.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slurm_llm._errors import SpecError
from slurm_llm._paths import shipped_dir, tomls_by_name
from slurm_llm.spec._toml_files import explain, read_toml


class Law(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    text: str = Field(min_length=1)
    check: str | None = None


class LawBook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: str = "1"
    laws: tuple[Law, ...] = Field(min_length=1)

    @field_validator("laws")
    @classmethod
    def _ids_are_unique(cls, laws: tuple[Law, ...]) -> tuple[Law, ...]:
        ids = [law.id for law in laws]
        if repeated := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"law ids must be unique; repeated: {', '.join(repeated)}")
        return laws

    @classmethod
    def from_file(cls, path: str | Path) -> LawBook:
        path = Path(path)
        missing = f"no law book at {path}; shipped ones: {', '.join(law_books())}"
        data = read_toml(path, "law book", missing)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"{path}: {explain(exc, 'law book', 'LawBook')}") from None

    @classmethod
    def named(cls, name_or_path: str) -> LawBook:
        """A shipped book by name (``academic``) or a TOML file."""
        books = law_books()
        return cls.from_file(books.get(name_or_path, Path(name_or_path)))

    def only(self, ids: list[str] | None) -> LawBook:
        """The book restricted to ``ids`` (all laws when None); unknown ids are an error."""
        if ids is None:
            return self
        known = {law.id for law in self.laws}
        if unknown := [i for i in ids if i not in known]:
            raise SpecError(
                f"unknown law(s) {', '.join(unknown)}; {self.name} has {', '.join(sorted(known))}"
            )
        return self.model_copy(update={"laws": tuple(law for law in self.laws if law.id in ids)})


def law_books() -> dict[str, Path]:
    """The shipped books by name: the repository's ``laws/``, inside the wheel as well."""
    return tomls_by_name(shipped_dir("laws", "laws"))
