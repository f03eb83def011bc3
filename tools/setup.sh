#!/usr/bin/env bash
# Create .venv (once) and install exactly requirements.lock into it, then flmm itself (editable).
# The lock pins the whole environment (tools/lock.sh makes it), so an upstream release changes nothing here;
# `pip check` proves the lock is complete. torchvision is never installed (DESIGN.md §6). Debian's chromium and
# chromium-driver are installed (as root) when missing, for the web demo's browser test.
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
pip_quiet --no-deps -r requirements.lock
pip_quiet --no-deps --no-build-isolation -e .
rm -f "$log"
.venv/bin/pip check >/dev/null || { .venv/bin/pip check; echo "tools/setup.sh: requirements.lock is incomplete; run tools/lock.sh" >&2; exit 1; }
# The web demo's browser test (tests/test_demo_web.py) drives Debian's headless Chromium through chromedriver;
# installed here, never by a test, and only when one of them is missing (setup stays fast otherwise).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "tools/setup.sh: installing Debian's chromium and chromium-driver (for the web demo's browser test)"
        # A failed install leaves the rest of the setup valid: only the browser test needs them.
        if ! { apt-get update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }; then
            echo "tools/setup.sh: installing chromium failed (output above); the browser test will be skipped" >&2
        fi
    else
        echo "tools/setup.sh: chromium or chromedriver missing; the browser test will be skipped (as root: apt-get install chromium chromium-driver)"
    fi
fi
.venv/bin/python -c "import flmm, torch; print(f'flmm ready (torch {torch.__version__})')"
