#!/usr/bin/env bash
# Installs the Cloud Tasks emulator into its own virtualenv, .venv-tasks.
# gcloud-tasks-emulator pins protobuf<5, which the service's own google-cloud-* libraries
# cannot share, so it lives apart. Idempotent: a working install is left as it is.
# (fake-gcs-server needs nothing here: its binary ships in a wheel of the test extras.)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${TASKS_EMULATOR_VENV:-.venv-tasks}"
PYTHON="${PYTHON:-python3}"
VERSION="0.6.2"

if [ -x "$VENV/bin/gcloud-tasks-emulator" ] \
    && "$VENV/bin/python" -m pip show gcloud-tasks-emulator 2>/dev/null | grep -x "Version: $VERSION" >/dev/null; then
    # (not grep -q: it stops reading early, pip dies of the closed pipe and, with pipefail, a
    # working install looked broken and was installed again on every run)
    echo "gcloud-tasks-emulator $VERSION already in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "gcloud-tasks-emulator==$VERSION"
"$VENV/bin/gcloud-tasks-emulator" --help >/dev/null
echo "gcloud-tasks-emulator $VERSION installed in $VENV"
