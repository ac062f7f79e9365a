#!/usr/bin/env bash
# Wheel check: build the wheel, install it into a fresh virtual environment (no system site-packages,
# no torch) and run the installed CLI from outside the source tree. Catches what an editable install
# hides: subpackages or data files left out of the wheel, dependencies missing from install_requires.
#
# Run alone:  bash .ci/wheel_check.sh        (called by .ci/run before pytest)
# Env: PYTHON (default python3) builds the wheel and writes the random-weight checkpoint (needs torch
#      and transformers); WHEEL_CHECK_DURATION (default 1) seconds of audio generated;
#      WHEEL_CHECK_KEEP=1 keeps the work folder.
set -euo pipefail

SRC="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DURATION="${WHEEL_CHECK_DURATION:-1}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/wheel-check.XXXXXX")"
if [[ "${WHEEL_CHECK_KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$WORK"' EXIT
fi
START=$SECONDS
section() { printf '\n=== [wheel check %4ds] %s\n' "$((SECONDS - START))" "$*"; }

section "copy the source tree (so the build neither uses nor leaves build/ or *.egg-info in it)"
mkdir -p "$WORK/src"
if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked files plus untracked ones git does not ignore; files deleted from the tree are skipped
    (cd "$SRC" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -f "$f" ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -C "$WORK/src" -xf -
else
    tar -C "$SRC" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ --exclude=.git -cf - . \
        | tar -C "$WORK/src" -xf -
fi

section "build the wheel: pip wheel --no-deps"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/musicgen_jax-*.whl)"
echo "$WHEEL"
"$PYTHON" -m zipfile -l "$WHEEL" | awk 'NR > 1 {print "  " $1}'

section "fresh virtual environment (no system site-packages), install the wheel with its dependencies"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet "$WHEEL"
if "$VPY" -c "import torch" 2>/dev/null; then
    echo "torch got installed into the venv: some dependency pulls it in; the package must not need it" >&2
    exit 1
fi
"$VPY" -m pip check
CLI="$WORK/venv/bin/musicgen-jax"

# Everything below runs from a folder outside the source tree, so `import musicgen_jax` cannot
# pick up the checkout.
mkdir -p "$WORK/run"
cd "$WORK/run"
export PYTHONNOUSERSITE=1
unset PYTHONPATH

section "import every module of the installed package (pkgutil)"
"$VPY" - "$SRC" <<'EOF'
import importlib
import os
import pkgutil
import sys

src = os.path.realpath(sys.argv[1])
prefix = os.path.realpath(sys.prefix)
import musicgen_jax

names = ["musicgen_jax"] + [m.name for m in pkgutil.walk_packages(musicgen_jax.__path__, "musicgen_jax.")]
bad = []
for name in names:
    module = importlib.import_module(name)
    path = os.path.realpath(module.__file__)
    if not path.startswith(prefix + os.sep) or path.startswith(src + os.sep):
        bad.append(f"{name}: {path}")
print(f"{len(names)} modules imported from {prefix}")
if "musicgen_jax.train" not in names:
    bad.append("musicgen_jax.train is not in the installed package")
if "torch" in sys.modules:
    bad.append("importing the package imported torch")
if bad:
    sys.exit("modules outside the venv or missing:\n  " + "\n  ".join(bad))
EOF

section "musicgen-jax --help and every subcommand's --help (listed from the parser)"
"$CLI" --help >/dev/null
mapfile -t COMMANDS < <("$VPY" - <<'EOF'
import argparse

from musicgen_jax.cli import build_parser


def walk(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + [name]
                yield from walk(sub, path + [name])


commands = [" ".join(p) for p in walk(build_parser(), [])]
expected = {"generate", "codec", "codec encode", "codec decode", "codec roundtrip", "prepare", "train", "export",
            "evaluate", "app"}
missing = expected - set(commands)
assert not missing, f"commands missing from the parser: {sorted(missing)}"
print("\n".join(commands))
EOF
)
for cmd in "${COMMANDS[@]}"; do
    read -r -a words <<<"$cmd"
    "$CLI" "${words[@]}" --help >/dev/null
    echo "  musicgen-jax $cmd --help: ok"
done

section "random-weight checkpoint (written with $PYTHON, which has torch and transformers)"
CKPT="$WORK/ckpt"
# (a module without a command line exits 0 on --help too: look for the command in the help text)
if (cd "$SRC" && "$PYTHON" -m musicgen_jax.testing write-checkpoint --help 2>/dev/null) | grep -qi usage; then
    (cd "$SRC" && "$PYTHON" -m musicgen_jax.testing write-checkpoint --layout transformers "$CKPT")
else  # stand-in until the testing CLI exists
    (cd "$SRC" && "$PYTHON" -c "import sys; from tests.train_fixtures import save_tiny_transformers_musicgen as s; s(sys.argv[1])" "$CKPT")
fi
ls "$CKPT"

section "musicgen-jax generate --duration $DURATION (installed CLI, offline)"
T0=$SECONDS
HF_HUB_OFFLINE=1 "$CLI" generate "a test prompt" --model "$CKPT" --duration "$DURATION" \
    --out "$WORK/run/out.wav" --seed 0 --quiet
echo "generate took $((SECONDS - T0)) s"
"$VPY" - "$WORK/run/out.wav" "$DURATION" <<'EOF'
import sys

import soundfile as sf

info = sf.info(sys.argv[1])
expected = round(float(sys.argv[2]) * info.samplerate)
print(f"{sys.argv[1]}: {info.frames} frames at {info.samplerate} Hz, {info.channels} channel(s)")
assert info.frames == expected, f"expected {expected} frames"
EOF

section "wheel check passed in $((SECONDS - START)) s"
