#!/usr/bin/env bash
# Sets up everything cream_tf needs on a fresh Debian machine: the Fashion-MNIST package,
# a virtual environment (.venv) with the pinned packages, and cream_tf itself (editable).
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --test   plus the test dependencies (pytest, torch, timm)
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
[[ "${1:-}" == "--test" ]] && with_test=1

data=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [[ ! -f "$data" ]]; then
  sudo=""; [[ "$(id -u)" != 0 ]] && sudo="sudo"
  echo "Installing Debian package dataset-fashion-mnist ..."
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

# The TensorFlow wheel is over 600 MB and a dropped connection near its end fails the whole
# install: an install that fails is tried again, up to three times (what it finished comes from
# pip's cache), before the error stands.
pip_install() {
  local try
  for try in 1 2 3; do
    .venv/bin/python -m pip install -q --retries 10 "$@" && return 0
    echo "pip install $* failed (attempt $try of 3)" >&2
    sleep $((try * 10))
  done
  return 1
}

[[ -x .venv/bin/python ]] || python3 -m venv .venv
pip_install --upgrade pip
# pip 25.1 and newer (just installed) resume a broken download where it stopped.
export PIP_RESUME_RETRIES=20
pip_install -r requirements.txt -c constraints.txt
if [[ $with_test == 1 ]]; then
  pip_install -r requirements-test.txt -c constraints.txt
fi
pip_install --no-deps --no-build-isolation -e .
echo "cream_tf is set up in .venv"
