"""Synthetic requests and levels with known answers, for the metric and saturation tests."""

from __future__ import annotations

from slurm_llm.bench import LatencyTargets, LevelResult, RequestRecord, summarise_level


def request(
    start: float = 0.0, ttft: float = 0.5, e2e: float = 2.0, tokens: int = 11, **fields: object
) -> RequestRecord:
    return RequestRecord(
        start_s=start, ttft_s=ttft, e2e_s=e2e, output_tokens=tokens, prompt_tokens=100, **fields
    )


def level(concurrency: int, tok_s: float, failed: int = 0, tpot: float = 0.05) -> LevelResult:
    """A level whose output-token throughput is ``tok_s``: one request of ``tok_s`` tokens
    finishing after one second, plus ``failed`` requests that failed."""
    tokens = round(tok_s)
    done = request(0.0, ttft=0.1, e2e=1.0, tokens=tokens)
    records = [done] + [RequestRecord(start_s=0.0, error="HTTP 500") for _ in range(failed)]
    result = summarise_level(records, LatencyTargets(), concurrency=concurrency)
    return result.model_copy(update={"tpot": result.tpot.model_copy(update={"p90": tpot})})
