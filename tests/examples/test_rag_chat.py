"""The RAG example's retrieval: documents cut into passages that know where they came from,
and the passage that answers a question found first."""

from __future__ import annotations

from pathlib import Path

import pytest
import rag_chat


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "slurm.md").write_text(
        "# Scheduling\n\nSLURM places each replica's job on a node with free GPUs; a job that\n"
        "cannot fit waits in the queue with the reason Resources.\n"
    )
    (tmp_path / "router.md").write_text(
        "# Balancing\n\nThe router sends each request to the replica with the fewest requests\n"
        "in flight, out of two picked at random.\n\n# Keys\n\nKeys are checked by hash.\n"
    )
    (tmp_path / "notes.txt").write_text("nginx is the other front end.\n")
    (tmp_path / "picture.png").write_bytes(b"\x89PNG")  # not a document: skipped
    return tmp_path


def test_the_passage_that_answers_is_found_first(folder: Path) -> None:
    index = rag_chat.Index(folder)
    assert len(index.passages) == 4
    best = index.search("Why does a job wait in the queue for GPUs?")[0]
    assert best.label() == "guides/slurm.md:3 (Scheduling)"
    assert "reason Resources" in best.text


def test_a_question_sharing_no_word_with_any_passage_finds_none(folder: Path) -> None:
    assert rag_chat.Index(folder).search("zebra xylophone") == []


def test_a_long_document_is_cut_at_paragraphs_and_each_passage_knows_its_line(
    tmp_path: Path,
) -> None:
    paragraph = " ".join(["word"] * 70)
    (tmp_path / "long.md").write_text(f"# Long\n\n{paragraph}\n\n{paragraph}\n\n{paragraph}\n")
    passages = rag_chat.Index(tmp_path).passages
    assert [p.line for p in passages] == [3, 7]  # two paragraphs joined, then the third
    assert all(p.heading == "Long" for p in passages)


def test_the_prompt_numbers_the_passages_as_the_answer_cites_them(folder: Path) -> None:
    found = rag_chat.Index(folder).search("replica requests in flight")
    text = rag_chat.prompt("Which replica?", found)
    assert text.startswith("Passages:\n\n[1] (router.md:3 (Balancing)) The router sends")
    assert text.endswith("Question: Which replica?")


def test_an_empty_folder_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no \.md, \.txt, \.rst documents under"):
        rag_chat.Index(tmp_path)


def test_a_comment_in_a_code_block_is_not_a_heading(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text(
        "# Keys\n\nMake one:\n\n```bash\n# prints the key once\nslurm-llm keys add alice\n```\n"
    )
    [passage] = rag_chat.Index(tmp_path).passages
    assert passage.heading == "Keys" and "# prints the key once" in passage.text
