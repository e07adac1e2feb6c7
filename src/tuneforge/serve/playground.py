"""The playground: one static page (serve/ui/: HTML, a script, a stylesheet; no framework, no build step) that the
API app serves at `/`, over the same endpoints and the same API key as any other client.

The page's three files are read once when the app is built and answered from memory. They are the only routes open
without the key (the key is typed into the page, kept in that browser tab, and sent with each API call like any
client's). A Content-Security-Policy allows nothing but this server: no external script, style, font or connection,
no inline script, no framing, so the page works with the network off and a model's answer cannot run as code (the
script also only ever inserts text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

UI_DIR = Path(__file__).parent / "ui"
PAGE_FILES = {"/": "index.html", "/ui/app.js": "app.js", "/ui/style.css": "style.css"}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8"}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
MAX_SAMPLES = 500  # validation rows a page may step through


def is_page_file(path: str) -> bool:
    """The routes open without the API key: the page's own files."""
    return path in PAGE_FILES


def add_playground(app: Any, samples: dict[str, Path], *, key_required: bool) -> None:
    """The page at `/` and `GET /ui/samples/{model}` (the kept validation rows of a served run, behind the key);
    `samples`: model id -> its run's validation_samples.jsonl. The page is told whether the API wants a key (not
    the key), so it asks for one before its first call instead of drawing a refusal."""
    from fastapi import Response

    for route, name in PAGE_FILES.items():
        content, media_type = (UI_DIR / name).read_bytes(), MEDIA_TYPES[Path(name).suffix]
        content = content.replace(b"{{api_key}}", b"required" if key_required else b"none")

        def page(content: bytes = content, media_type: str = media_type) -> Response:
            return Response(content, media_type=media_type, headers=PAGE_HEADERS)

        app.add_api_route(route, page, methods=["GET"], include_in_schema=False)

    @app.get("/ui/samples/{model_id}", include_in_schema=False)
    def validation_samples(model_id: str) -> dict[str, Any]:
        from starlette.exceptions import HTTPException

        from tuneforge.rundir import read_jsonl

        path = samples.get(model_id)
        if path is None:  # the app answers it in the API's error shape
            kept = ", ".join(samples) or "none"
            raise HTTPException(404, f"no validation samples are kept for {model_id!r} (models with samples: {kept})")
        rows = read_jsonl(path)
        return {"object": "list", "model": model_id, "data": rows[:MAX_SAMPLES], "total": len(rows)}
