"""The gradio page: audiocraft's MusicGen demo controls, audio streamed while it is generated, Stop, the
wav to download and its picture. Request handling is service.py; this module lays out the page, wires
its events and turns every error into a message in the page.

The generation event is the API endpoint `/generate`; its parameters are the handler's parameter names
(prompt, duration, model, melody, top_k, top_p, temperature, cfg_coef, seed) and its first output is the
wav file."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil

from musicgen_jax.app.service import (AppError, Chunk, Limits, ModelCache, OutputFolder, Result, Status, check_request,
                                      generate, out_of_memory)
from musicgen_jax.config import PRESETS

logger = logging.getLogger("musicgen_jax.app")

# official models in the order of the demo's list: sizes, then melody, then their stereo versions
_ORDER = ("small", "medium", "large", "melody", "melody-large")
OFFICIAL_MODELS = tuple(f"facebook/{name}" for name in sorted(
    PRESETS, key=lambda n: ("stereo" in n, _ORDER.index(n.removeprefix("musicgen-").removeprefix("stereo-")))))

INTRO = """# MusicGen (JAX)
Describe the music, press **Generate**: it starts playing while it is still being generated, and
**Stop** ends the generation within a second of audio. The finished piece can be downloaded as a wav.
"""

DETAILS = """### Notes
- **Models.** The list holds the official checkpoints (downloaded from the Hugging Face hub on first
  use, then cached) and the one the app was started with. One model is kept in memory: choosing another
  replaces it.
- **Duration.** Up to the model's window (30 s for the official models) the piece is generated in one
  pass; longer pieces continue in windows that restart from the last seconds (audiocraft's scheme).
- **Melody.** Melody models (`musicgen-melody`, `musicgen-stereo-melody`, ...) follow the melody of an
  uploaded or recorded clip; its first *duration* seconds are used.
- **Sampling.** Top-k 0 turns top-k off; top-p > 0 samples from the smallest set of tokens whose
  probabilities reach it; temperature 0 is greedy; seed -1 draws a random seed (shown when done).
- **Queue.** One generation runs at a time; the others wait in a queue, shown with their position. When
  the queue is full the page says the app is busy: try again later.
"""


@dataclasses.dataclass
class AppState:
    """What the page's handlers share: the default model, the bounds, the one-model cache and the
    folder of finished pieces. stream: feed the player while generating (needs ffmpeg). any_model: accept
    any hub name or server folder typed in the page, not only the listed ones (for an app that only this
    machine reaches: `serve` turns it off for other addresses and --share)."""

    model: str = "facebook/musicgen-small"
    limits: Limits = dataclasses.field(default_factory=Limits)
    cache: ModelCache = dataclasses.field(default_factory=ModelCache)
    folder: OutputFolder = dataclasses.field(default_factory=OutputFolder)
    stream: bool = dataclasses.field(default_factory=lambda: shutil.which("ffmpeg") is not None)
    any_model: bool = True


def melody_visible(model: str) -> bool:
    """Whether the melody input applies: hidden for official models without melody conditioning, shown
    for melody models and for local folders (which may be either)."""
    name = (model or "").strip()
    return name not in OFFICIAL_MODELS or "melody" in name


def message(error: Exception) -> str:
    """The page's text for an error the handlers did not foresee (its traceback goes to the server log)."""
    if out_of_memory(error):
        return "Out of memory: choose a shorter duration or a smaller model."
    text = (str(error).strip().splitlines() or [""])[0][:300]
    return f"Generation failed ({type(error).__name__}{': ' + text if text else ''}); details are in the server log."


def build_page(state: AppState):
    """The gradio Blocks of the app (not yet queued or launched)."""
    import gradio as gr

    limits = state.limits
    default_duration = min(10, limits.max_duration)
    choices = list(OFFICIAL_MODELS) + ([state.model] if state.model not in OFFICIAL_MODELS else [])

    def generate_music(prompt, duration=default_duration, model=state.model, melody=None, top_k=250, top_p=0.0,
                       temperature=1.0, cfg_coef=3.0, seed=-1):
        """Text (and, for melody models, a melody file) -> music. Yields the page's outputs: the wav
        file (at the end), audio chunks for the player, the picture and a summary (at the end), and the
        progress line. Stop writes the summary line only: a progress update still in flight when it
        lands cannot overwrite it."""
        skip = gr.skip()
        try:
            request = check_request(prompt, duration, model, melody, top_k, top_p, temperature, cfg_coef, seed,
                                    limits, models=None if state.any_model else choices)
            yield None, skip, None, "", "Waiting for the model…"
            # closing(): when gradio closes this generator (Stop), the model's stream is closed at once
            with contextlib.closing(generate(request, state.cache, state.folder, limits, warn=gr.Warning)) as events:
                progress_text = ""
                for event in events:
                    if isinstance(event, Status):
                        progress_text = event.text
                        yield skip, skip, skip, skip, progress_text
                    elif isinstance(event, Chunk):
                        progress_text = event.text
                        yield skip, event.wav if state.stream else skip, skip, skip, progress_text
                    elif isinstance(event, Result):  # None ends the stream: API clients get its playlist
                        yield (event.wav_path, None if state.stream else event.wav_path, event.picture_path,
                               event.text, progress_text)
        except AppError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - shown as a message, logged with its traceback
            logger.exception("generation failed")
            raise gr.Error(message(e), print_exception=False) from None

    with gr.Blocks(title="MusicGen (JAX)", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Describe the music", lines=3, elem_id="prompt",
                                    placeholder="lofi hip hop with a mellow piano, 90 bpm",
                                    info=f"At most {limits.max_prompt_chars} characters.")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                model = gr.Dropdown(choices, value=state.model, allow_custom_value=state.any_model, label="Model",
                                    info="An official model, or type the path of a local checkpoint folder."
                                    if state.any_model else None, elem_id="model")
                melody = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="melody",
                                  label="Melody (optional; melody models only)", visible=melody_visible(state.model))
                duration = gr.Slider(1, limits.max_duration, value=default_duration, step=1,
                                     label="Duration (s)", elem_id="duration")
                with gr.Row():
                    top_k = gr.Number(250, precision=0, label="Top-k", elem_id="top_k")
                    top_p = gr.Number(0.0, label="Top-p", elem_id="top_p")
                    temperature = gr.Number(1.0, label="Temperature", elem_id="temperature")
                    cfg_coef = gr.Number(3.0, label="Classifier-free guidance", elem_id="cfg_coef")
                    seed = gr.Number(-1, precision=0, label="Seed (-1: random)", elem_id="seed")
            with gr.Column():
                audio = gr.Audio(label="Music (plays while it is generated)", streaming=state.stream, autoplay=True,
                                 interactive=False, elem_id="music")
                progress = gr.Markdown(label="Progress", elem_id="progress")
                wav_file = gr.File(label="Download (wav)", interactive=False, elem_id="download")
                picture = gr.Image(label="Waveform and spectrogram", show_label=False, type="filepath",
                                   interactive=False, elem_id="picture")
                status = gr.Markdown(label="Status", elem_id="status")
        gr.Markdown(DETAILS)

        event = run.click(generate_music, inputs=[prompt, duration, model, melody, top_k, top_p, temperature,
                                                  cfg_coef, seed],
                          outputs=[wav_file, audio, picture, status, progress], api_name="generate",
                          show_progress="minimal", concurrency_limit=1)
        stop.click(lambda: "Stopped.", outputs=[status], cancels=[event], queue=False, api_visibility="private")
        model.change(lambda name: gr.update(visible=melody_visible(name)), inputs=[model], outputs=[melody],
                     queue=False, api_visibility="private")
    return page
