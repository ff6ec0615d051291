#!/usr/bin/env bash
# tp0's compose generator: ./generar-compose.sh OUT N [--servers K]
# e.g. ./generar-compose.sh docker-compose-dev.yaml 5, then: docker compose -f docker-compose-dev.yaml up --build
# --servers K (K > 1): K servers sharing one PostgreSQL service; every agency gets the list.
# It runs scripts/generate_compose.py N OUT [--servers K] (the project's venv Python when there is one).
set -euo pipefail
if [ "$#" -ne 2 ] && { [ "$#" -ne 4 ] || [ "$3" != "--servers" ]; }; then
  echo "usage: $0 OUT N [--servers K] (e.g. $0 docker-compose-dev.yaml 5)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$here/.venv/bin/python" ]; then python="$here/.venv/bin/python"; else python=python3; fi
fi
exec "$python" "$here/scripts/generate_compose.py" "$2" "$1" "${@:3}"
