"""The MusicGen web app from a clone: `python app.py [--model NAME_OR_DIR] [--port 7860] ...`
(the same as `musicgen-jax app ...`; needs `pip install -e ".[app]"`)."""
import sys

from musicgen_jax.app import main

if __name__ == "__main__":
    sys.exit(main())
