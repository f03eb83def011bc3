#!/usr/bin/env bash
# Create .venv (once) and install flmm with its pinned dependencies into it.
# torch is held at the machine's build by constraints.txt (DESIGN.md §6); torchvision is never installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
log=$(mktemp)
pip_quiet() {
    # pip's notes about absent local mirrors are noise; its real errors are shown in full.
    if ! .venv/bin/pip install -q "$@" >"$log" 2>&1; then
        cat "$log"
        echo "tools/setup.sh: pip install $* failed" >&2
        exit 1
    fi
    grep -v "is ignored: it is neither a file nor a directory" "$log" || true
}
pip_quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
pip_quiet --no-deps --no-build-isolation -e .
rm -f "$log"
.venv/bin/python -c "import flmm, torch; print(f'flmm ready (torch {torch.__version__})')"
