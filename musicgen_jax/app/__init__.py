"""The web app: audiocraft's MusicGen demo, self-hosted, with the audio streamed while it is generated.

    musicgen-jax app [--model NAME_OR_DIR] [--host 127.0.0.1] [--port 7860] [--share] [--max-duration 120]
                     [--queue-size N]
    python -m musicgen_jax.app ...      python app.py ...   (from a clone)

Needs the `app` extra (gradio, matplotlib): pip install 'musicgen_jax[app]'; ffmpeg on PATH for the
streamed audio. gradio is imported only when the app is built, so this package imports without it.
service.py handles requests (no gradio), page.py is the page, picture.py draws the result."""
from __future__ import annotations

import atexit
import logging
import shutil
import signal
import sys

DEFAULT_QUEUE_SIZE = 16


class MissingExtraError(ValueError):
    """The app's optional packages are not installed."""


def require_gradio():
    try:
        import gradio
    except ImportError:
        raise MissingExtraError("the web app needs gradio: pip install 'musicgen_jax[app]'") from None
    return gradio


def build_app(model: str = "facebook/musicgen-small", *, max_duration: float = 120.0,
              queue_size: int = DEFAULT_QUEUE_SIZE, any_model: bool = True, cache=None, folder=None,
              stream: bool | None = None):
    """The queued gradio Blocks of the app: one generation at a time, at most `queue_size` requests waiting.
    any_model: also load hub names and server folders typed in the page (False: the listed models only).
    cache (service.ModelCache) and folder (service.OutputFolder) may be given, e.g. by tests; stream None:
    stream when ffmpeg is installed. Launch it with `.launch(...)` (see `serve`)."""
    from musicgen_jax.app.page import AppState, build_page
    from musicgen_jax.app.service import Limits, ModelCache, OutputFolder

    require_gradio()
    state = AppState(model=model, limits=Limits(max_duration=max_duration), cache=cache or ModelCache(),
                     folder=folder or OutputFolder(), any_model=any_model)
    if stream is not None:
        state.stream = stream
    page = build_page(state)
    page.state = state
    return page.queue(max_size=queue_size, default_concurrency_limit=1)


def serve(model: str = "facebook/musicgen-small", host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          max_duration: float = 120.0, queue_size: int = DEFAULT_QUEUE_SIZE) -> int:
    """Builds the app and serves it until interrupted. The model loads on the first Generate. Served
    beyond this machine (another host address, or share), the page loads only the listed models: typed
    hub names and server folders are refused."""
    gr = require_gradio()
    if shutil.which("ffmpeg") is None:
        print("musicgen-jax app: ffmpeg is not on PATH, so the audio plays only when it is finished; install "
              "ffmpeg (e.g. apt-get install ffmpeg) to hear it while it is generated", file=sys.stderr)
    log = logging.getLogger("musicgen_jax.app")  # requests, stops and failures, on stderr
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("musicgen-jax app: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    local = host in ("127.0.0.1", "localhost", "::1") and not share
    page = build_app(model, max_duration=max_duration, queue_size=queue_size, any_model=local)
    atexit.register(page.state.folder.cleanup)
    # a service manager's stop (SIGTERM) ends the app as Ctrl-C does: gradio closes, the results folder goes
    signal.signal(signal.SIGTERM, _interrupt)
    log.info("finished pieces are kept for an hour in %s (removed when the app stops)", page.state.folder.root)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: works offline
    page.launch(server_name=host, server_port=port, share=share, allowed_paths=[page.state.folder.root],
                ssr_mode=False, theme=theme)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`python -m musicgen_jax.app ARGS` = `musicgen-jax app ARGS` (one parser, in cli.py)."""
    from musicgen_jax.cli import main as cli_main

    return cli_main(["app", *(sys.argv[1:] if argv is None else argv)])
