"""``/ui``: the web console, served by the router from files in the package (``console/``).

Its page, script and style are the same for everyone and hold no data, so they are served
without a key; everything they show comes from the router's APIs, which the page calls with
the key its user types (kept in the browser). Every asset ships in the wheel and the page's
``Content-Security-Policy`` lets it load nothing from anywhere but the router: it works on a
cluster without internet. The files are read once, at start-up; a request for one is a
dictionary lookup, and a router started with ``--no-ui`` has none of these routes.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from slurm_llm.router._routes import Routes

PREFIX = "/ui"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def asset_names() -> list[str]:
    folder = resources.files("slurm_llm.router") / "console"
    return sorted(f.name for f in folder.iterdir() if f.name.endswith(tuple(CONTENT_TYPES)))


def asset_paths() -> frozenset[str]:
    """The console's paths, all open (see the module's docstring)."""
    return frozenset({PREFIX, f"{PREFIX}/", *(f"{PREFIX}/{name}" for name in asset_names())})


def load_assets() -> dict[str, tuple[bytes, dict[str, str]]]:
    """Each path's body and headers, read once; ``/ui/`` is the page."""
    folder = resources.files("slurm_llm.router") / "console"
    answers = {}
    for name in asset_names():
        headers = {
            "Content-Type": CONTENT_TYPES[name[name.rindex(".") :]],
            "Content-Security-Policy": POLICY,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        answers[f"{PREFIX}/{name}"] = ((folder / name).read_bytes(), headers)
    answers[f"{PREFIX}/"] = answers[f"{PREFIX}/index.html"]
    return answers


def add_routes(routes: Routes) -> None:
    assets = load_assets()

    async def asset(request: web.Request) -> web.Response:
        found = assets.get(request.path)
        if found is None:
            raise web.HTTPNotFound()
        body, headers = found
        return web.Response(body=body, headers=headers)

    async def page(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": f"{PREFIX}/"})

    routes.get(PREFIX, page)
    routes.get(PREFIX + "/{asset:[A-Za-z0-9._-]*}", asset)
