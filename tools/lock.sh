#!/usr/bin/env bash
# Refresh requirements.lock: resolve requirements.txt + requirements-dev.txt (ranges) in a throw-away venv and
# pin the whole resolved environment, every transitive package at its exact version (setuptools too, which
# tensorboard needs at run time; not pip itself).
#
#     bash tools/lock.sh
#
# Run it on purpose (to take new upstream releases, or after changing a requirement), then run the tests and
# commit the lock with the change. tools/setup.sh and CI install only from the lock, so nothing upstream
# changes a checkout until this is run. torch is resolved under constraints.txt (the machine's own build,
# DESIGN.md §6) and locked without its local build label (2.13.0, not 2.13.0+cpu), so that a GPU machine's
# CUDA build of the same version satisfies the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
{
    echo "# The whole resolved environment of requirements.txt + requirements-dev.txt, exact versions."
    echo "# Made by 'bash tools/lock.sh' with $("$scratch/venv/bin/python" -V) on $(date -u +%Y-%m-%d);"
    echo "# installed by tools/setup.sh. Do not edit by hand: change a requirement, then run tools/lock.sh."
    "$scratch/venv/bin/pip" freeze --all --exclude-editable | grep -v "^pip==" | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*/\1/' | LC_ALL=C sort -f
} >requirements.lock.new
mv requirements.lock.new requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
