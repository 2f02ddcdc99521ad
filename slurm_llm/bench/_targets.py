"""What a benchmark drives: a deployment's replicas directly, a router job, or any URL.

Direct (``--deployment``) sends to the replicas in turn, with no front end: the baseline that
shows what a front end costs. A router or nginx job is found by name, from the address it
publishes; anything else (a router started by hand, an nginx prefix, another vendor's server)
is a URL. The model is asked of the server when not named, so a typo fails before any load.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from slurm_llm._errors import SpecError
from slurm_llm._paths import registry_dir
from slurm_llm._registry import Registry
from slurm_llm.bench._loadgen import Target
from slurm_llm.bench._results import FrontEnd, TargetInfo
from slurm_llm.jobs._front_end_job import read_address


def served_models(url: str, headers: dict[str, str]) -> list[str]:
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            listing = json.load(response)
    except (OSError, ValueError) as error:
        raise SpecError(f"{url} does not answer GET /v1/models ({error}); is it running?") from None
    return [str(entry["id"]) for entry in listing.get("data", [])]


def engine_version(url: str, headers: dict[str, str]) -> str | None:
    """What the server says it is: vLLM's ``/version``, llama.cpp's ``/props`` build; None for a
    front end or an engine that says neither."""
    for path, key in (("/version", "version"), ("/props", "build_info")):
        request = urllib.request.Request(f"{url.rstrip('/')}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                value = json.load(response).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return str(value)
    return None


def _pick_model(url: str, model: str | None, headers: dict[str, str]) -> str:
    models = served_models(url, headers)
    if model is None:
        if len(models) != 1:
            raise SpecError(f"{url} serves {models or 'no models'}: name one with --model")
        return models[0]
    if model not in models:
        raise SpecError(f"{url} does not serve {model!r}; it serves {', '.join(models) or 'none'}")
    return model


def deployment_target(
    name: str, home: Path | None = None, headers: dict[str, str] | None = None
) -> tuple[Target, TargetInfo]:
    records = Registry(registry_dir(home)).records(name)
    if not records:
        raise SpecError(
            f"deployment {name!r} has no ready replicas; `slurm-llm status` shows what runs"
        )
    urls = [record.url for record in sorted(records, key=lambda r: r.replica)]
    info = TargetInfo(
        front_end="direct",
        urls=urls,
        model=records[0].model,
        engine=records[0].engine,
        engine_version=engine_version(urls[0], headers or {}),
        replicas=len(urls),
        deployment=name,
    )
    return Target(urls, info.model, headers or {}), info


def front_end_target(
    name: str,
    model: str | None,
    home: Path | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[Target, TargetInfo]:
    address = read_address(name, home)
    if address is None:
        raise SpecError(
            f"no router or nginx job named {name!r} has published its address; start one with "
            "`slurm-llm router --submit` or `slurm-llm nginx run --submit`"
        )
    front_end: FrontEnd = "nginx" if address.kind == "nginx" else "router"
    return url_target(address.url, model, front_end, headers=headers)


def url_target(
    url: str,
    model: str | None,
    front_end: FrontEnd = "url",
    headers: dict[str, str] | None = None,
    engine: str = "unknown",
    replicas: int | None = None,
) -> tuple[Target, TargetInfo]:
    headers = headers or {}
    chosen = _pick_model(url, model, headers)
    info = TargetInfo(
        front_end=front_end,
        urls=[url],
        model=chosen,
        engine=engine,
        engine_version=engine_version(url, headers),
        replicas=replicas,
    )
    return Target([url], chosen, headers), info
