"""The browser chat page (`GET /`, `chat.js`, `chat.css`) as a FastAPI router any app can include; knows nothing of
the model, the engine or the API key: the page talks to whatever serves OpenAI's API beside it.

    from gptkit.serve.web import chat_page_routes
    app.include_router(chat_page_routes(title="Customer service"))   # any FastAPI app with /v1/chat/completions

    mount_chat_page(app, title="Customer service")                   # the same, in one call

The page is plain HTML, CSS and JavaScript shipped in this package (nothing is fetched from the internet, and its
Content-Security-Policy forbids it). It calls `v1/models` and `v1/chat/completions` (`stream: true`) by relative
URLs, sends the whole conversation each turn with the system prompt and sampling settings of its side panel,
an API key as `Authorization: Bearer KEY` when one is typed in, and shows the server's OpenAI-shaped errors,
including those that arrive as an event in a stream. Model output is inserted as text, never as HTML.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response

from gptkit.errors import require

ASSETS = {"chat.js": "text/javascript; charset=utf-8", "chat.css": "text/css; charset=utf-8"}
"""The page's static files (served beside it) and their content types."""
PATHS = ("/", *(f"/{name}" for name in ASSETS))
"""What the router serves (relative to its prefix); none of it needs an API key."""

# Same-origin only: the page may load its own script and style and talk to its own server, nothing else; an
# injected tag could neither run inline script nor reach another host. `data:` images: the empty favicon.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class ChatPage:
    """What the page shows and where it finds the API."""

    title: str = "gptkit chat"
    """The page's title and heading."""
    api_base: str = "v1"
    """The OpenAI API's base, relative to the page (or an absolute path on the same host, e.g. /api/v1)."""

    def validate(self) -> None:
        require(bool(self.title.strip()), "the chat page's title must not be empty")
        require("://" not in self.api_base and not self.api_base.startswith("//"),
                f"the chat page's api_base must be a path on the page's own server, got {self.api_base!r}")


@cache
def asset(name: str) -> str:
    """The text of one of the page's files (index.html, chat.js, chat.css), read from the installed package."""
    return (files(__package__) / name).read_text(encoding="utf-8")


def render_index(page: ChatPage) -> str:
    """index.html with the title and API base filled in (HTML-escaped: the title may come from anyone's config)."""
    return (asset("index.html").replace("{{title}}", html.escape(page.title))
            .replace("{{api_base}}", html.escape(page.api_base.rstrip("/"))))


def chat_page_routes(title: str = "gptkit chat", *, api_base: str = "v1") -> APIRouter:
    """A router serving the chat page at `/` and its `chat.js` and `chat.css`, kept out of the OpenAPI schema.

    title: the page's title and heading. api_base: where the page finds `models` and `chat/completions`, relative
    to the page (default `v1`, i.e. /v1 for a page at /) or an absolute path on the same host.
    """
    page = ChatPage(title=title, api_base=api_base)
    page.validate()
    index = render_index(page)
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(index, headers={**headers, "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                            "Referrer-Policy": "no-referrer"})

    for name, media_type in ASSETS.items():
        router.add_api_route(f"/{name}", _static(asset(name), media_type, headers), methods=["GET"], name=name)
    return router


def _static(text: str, media_type: str, headers: dict[str, str]):
    """An endpoint answering one fixed file (a closure: FastAPI would read default arguments as query parameters)."""
    async def endpoint() -> Response:
        return Response(text, media_type=media_type, headers=headers)

    return endpoint


def mount_chat_page(app: FastAPI, title: str = "gptkit chat", *, api_base: str = "v1", prefix: str = "") -> None:
    """Include the chat page's routes in `app` at `prefix` ("/chat" serves the page at /chat/; the API is then
    at /chat/v1 unless `api_base` says otherwise, e.g. api_base="/v1")."""
    app.include_router(chat_page_routes(title, api_base=api_base), prefix=prefix)
