"""`python -m musicgen_jax.app [--model NAME_OR_DIR] [--port 7860] ...`: the web app."""
import sys

from musicgen_jax.app import main

if __name__ == "__main__":
    sys.exit(main())
