"""Reading a router's ``/metrics`` as Prometheus does: over HTTP, so a test checks what a
scraper sees, with one router process or several (whose metrics the answering worker sums)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def scraped(url: str, name: str, labels: dict[str, str]) -> float:
    """The value of the sample ``name`` with ``labels`` at ``url/metrics``; 0 if there is none
    yet (a counter no request has touched)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
