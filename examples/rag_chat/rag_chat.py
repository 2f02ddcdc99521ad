"""Ask questions about a folder of documents, answered through a slurm-llm router with citations.

The paper's chatbot with retrieval, in one file: the documents (Markdown or text) are cut into
passages of a few paragraphs and indexed with BM25 (``bm25s``: no model to download, works
offline); a question retrieves the best passages, which go to the model numbered, with the
instruction to answer only from them and cite them as [1], [2]. The answer streams through the
router's OpenAI API (so it is balanced, queued and retried like any request, and counted
against the caller's key), and the sources it cited are listed after it.

    python examples/rag_chat/rag_chat.py ask "How do I scale a deployment?" --docs docs
    python examples/rag_chat/rag_chat.py chat --docs docs --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import openai

PASSAGE_WORDS = 120  # paragraphs are joined up to about this many words
SUFFIXES = (".md", ".txt", ".rst")
INSTRUCTION = (
    "Answer the question using only the numbered passages below. After each statement, cite "
    "the passage it comes from as [1], [2] and so on. If the passages do not answer the "
    "question, say that you do not know."
)
CITATION = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Passage:
    source: str  # the file, relative to the indexed folder
    line: int  # where the passage starts, 1-based
    heading: str  # the nearest Markdown heading above it
    text: str

    def label(self) -> str:
        where = f"{self.source}:{self.line}"
        return f"{where} ({self.heading})" if self.heading else where


def passages_of(path: Path, root: Path) -> Iterator[Passage]:
    """``path`` in passages: paragraphs (blank-line separated) joined up to PASSAGE_WORDS."""
    heading, start, lines = "", 0, list[str]()
    source = str(path.relative_to(root))

    def flush() -> Iterator[Passage]:
        text = " ".join(" ".join(lines).split())
        if text:
            yield Passage(source, start + 1, heading, text)

    fenced = False  # inside a code block, where "#" starts a comment, not a heading
    for number, line in enumerate(path.read_text(errors="replace").splitlines()):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if line.startswith("#") and not fenced:
            yield from flush()
            heading, start, lines = line.lstrip("#").strip(), number, []
            continue
        if not lines and not line.strip():
            continue  # blank lines between passages
        if not lines:
            start = number
        lines.append(line)
        if not line.strip() and len(" ".join(lines).split()) >= PASSAGE_WORDS:
            yield from flush()
            lines = []
    yield from flush()


class Index:
    """BM25 over every passage of the documents under a folder."""

    def __init__(self, folder: Path) -> None:
        files = sorted(p for p in folder.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        self.passages = [passage for path in files for passage in passages_of(path, folder)]
        if not self.passages:
            raise SystemExit(f"no {', '.join(SUFFIXES)} documents under {folder}")
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenize([p.text for p in self.passages], show_progress=False),
                        show_progress=False)  # fmt: skip

    def search(self, question: str, k: int = 4) -> list[Passage]:
        """The ``k`` passages that match ``question`` best, best first (none that share no
        word with it)."""
        words = bm25s.tokenize([question], return_ids=False, show_progress=False)
        found, scores = self.bm25.retrieve(words, k=min(k, len(self.passages)),
                                           show_progress=False)  # fmt: skip
        return [self.passages[i] for i, score in zip(found[0], scores[0], strict=True) if score > 0]


@dataclass
class Answer:
    text: str
    retrieved: list[Passage]
    cited: list[Passage] = field(default_factory=list)  # the retrieved passages it cites


def prompt(question: str, passages: list[Passage]) -> str:
    numbered = "\n\n".join(f"[{n}] ({p.label()}) {p.text}" for n, p in enumerate(passages, 1))
    return f"Passages:\n\n{numbered}\n\nQuestion: {question}"


def ask(
    client: openai.OpenAI,
    model: str,
    index: Index,
    question: str,
    k: int = 4,
    max_tokens: int = 256,
    on_piece: Callable[[str], None] | None = None,
) -> Answer:
    """The model's answer from the passages that match ``question``; ``on_piece`` is called
    with each piece of text as it streams in."""
    retrieved = index.search(question, k)
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": INSTRUCTION},
                  {"role": "user", "content": prompt(question, retrieved)}],
        # A little against repeating itself: small models loop on "The answer is:" without it.
        max_tokens=max_tokens, temperature=0, frequency_penalty=0.5, stream=True,
    )  # fmt: skip
    pieces = []
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            pieces.append(piece)
            if on_piece is not None:
                on_piece(piece)
    text = "".join(pieces)
    numbers = dict.fromkeys(int(n) for n in CITATION.findall(text))
    cited = [retrieved[n - 1] for n in numbers if 1 <= n <= len(retrieved)]
    return Answer(text, retrieved, cited)


def show(answer: Answer) -> None:
    print("\n")  # the streamed answer's line ends, then a blank line before the sources
    if answer.cited:
        print("Sources cited:")
        for n, passage in enumerate(answer.retrieved, 1):
            if passage in answer.cited:
                print(f"  [{n}] {passage.label()}")
    else:  # a small model may not cite: say what it was given
        print("No passage cited; the answer was drawn from:")
        for n, passage in enumerate(answer.retrieved, 1):
            print(f"  [{n}] {passage.label()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["ask", "chat"])
    parser.add_argument("question", nargs="?", help="for ask")
    parser.add_argument(
        "--docs",
        default=str(Path(__file__).parents[2] / "docs"),
        help="the folder of documents (default: slurm-llm's own docs)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("SLURM_LLM_ROUTER", "http://127.0.0.1:8000"),
        help="the router (default $SLURM_LLM_ROUTER or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("SLURM_LLM_API_KEY", "-"),
        help="an API key, if the router needs one (default $SLURM_LLM_API_KEY)",
    )
    parser.add_argument("--model", help="default: the first model the router serves")
    parser.add_argument("-k", type=int, default=4, help="passages per question")
    args = parser.parse_args(argv)
    if args.command == "ask" and not args.question:
        parser.error("ask needs a question")
    index = Index(Path(args.docs))
    client = openai.OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.key)
    model = args.model or client.models.list().data[0].id
    print(f"{len(index.passages)} passages from {args.docs}; {model} answers", file=sys.stderr)
    questions = [args.question] if args.command == "ask" else iter(lambda: input("> "), "")
    try:
        for question in questions:
            show(ask(client, model, index, question, args.k,
                     on_piece=lambda piece: print(piece, end="", flush=True)))  # fmt: skip
    except (EOFError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
