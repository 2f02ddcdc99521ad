from slurm_llm.jobs._replica_job import job_error_message

SUBMITIT_TEXT = """Job (task=0) failed during processing with trace:
----------------------
Traceback (most recent call last):
  File "x.py", line 1, in <module>
slurm_llm._errors.EngineError: engine exited with code 1 before it was ready; last log lines:
error: model file is corrupt
----------------------
You can check full logs with 'job.stderr(0)'"""


def test_our_own_error_message_is_extracted_from_submitits_traceback() -> None:
    assert job_error_message(SUBMITIT_TEXT) == (
        "EngineError: engine exited with code 1 before it was ready; last log lines:\n"
        "error: model file is corrupt"
    )


def test_foreign_errors_keep_the_traceback_tail() -> None:
    text = "Traceback (most recent call last):\n  File 'x'\nMemoryError: out of memory"
    assert job_error_message(text).endswith("MemoryError: out of memory")


def test_our_error_is_found_under_its_public_module_too() -> None:
    """Public errors present themselves as ``slurm_llm.SpecError`` in tracebacks."""
    text = SUBMITIT_TEXT.replace("slurm_llm._errors.EngineError", "slurm_llm.SpecError")
    assert job_error_message(text).startswith("SpecError: engine exited with code 1")
