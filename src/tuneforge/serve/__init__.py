"""Serving fine-tuned models over HTTP in OpenAI's API shape, on Ray Serve: `tuneforge serve`."""

from tuneforge.serve.api import Limits, build_app
from tuneforge.serve.engines import Engines, load_engines
from tuneforge.serve.server import Served, ServeOptions, start, stop

__all__ = ["Engines", "Limits", "ServeOptions", "Served", "build_app", "load_engines", "start", "stop"]
