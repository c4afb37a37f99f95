# Shared by .ci/run and .ci/latest (sourced, not run).

OLDEST_PYTHON="$(sed -n 's/^requires-python = ">=\([0-9.]*\)".*/\1/p' pyproject.toml)"
NEWEST_PYTHON=3.13  # the newest CPython this project is tested on (and its classifiers say)
# The frameworks suite's tests whose frameworks install beside openai 3 (the
# frameworks-openai3 extra); instructor's and llama-index's need openai<3.
FRAMEWORKS_ON_OPENAI3="tests_frameworks/test_openai_agents.py tests_frameworks/test_pydantic_ai.py tests_frameworks/test_langchain.py tests_frameworks/test_examples.py"

# A python of one minor release (3.13): pyenv's versions folder first (its shims answer
# for versions that are not selected, then fail), else the PATH.
python_of() {
  local version=$1 root candidate
  root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
  for candidate in $(ls -d "$root"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V -r) \
    "$(command -v "python$version" || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys' >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  echo "no Python $version on this machine (PATH or pyenv)" >&2
  return 1
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping
}

# PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres): started if a local cluster is
# down. The tests create (and drop) a database of their own for each test.
ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    local cluster
    cluster="$(pg_lsclusters --no-header 2>/dev/null | awk '$3 == 5432 {print $1 " " $2; exit}')"
    [ -n "$cluster" ] && pg_ctlcluster $cluster start || true
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc "select 'postgresql ' || current_setting('server_version')"
}

# Debian's chromium and its chromedriver, for the dashboard's browser test.
ensure_browser() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
  fi
  /usr/bin/chromedriver --version
}

# suite NAME PYTHON [CONSTRAINTS [EXTRA [TESTS]]]: a fresh venv under .ci/venvs/NAME, the
# README's install of the extra (dev by default; constrained by the lock file given, else
# unconstrained), then the README's test command (on TESTS when given, e.g. the frameworks
# suite: tests_frameworks with the frameworks extra).
suite() {
  local name=$1 python=$2 lock=${3:-} extra=${4:-dev} tests=${5:-} venv=".ci/venvs/$1"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -c 'import sys; print("python", sys.version.split()[0])'
  if [ -n "$lock" ]; then
    PIP_CONSTRAINT="$(pwd)/$lock" "$venv/bin/pip" install -q -e ".[$extra]"
  else
    PIP_CONSTRAINT="" "$venv/bin/pip" install -q --upgrade -e ".[$extra]"
  fi
  "$venv/bin/pip" list --format=freeze 2>/dev/null \
    | grep -iE '^(openai|anthropic|tiktoken|tenacity|redis|genai-prices|openai-agents|pydantic-ai-slim|langchain-openai|instructor|llama-index-llms-openai)==' \
    | tr '\n' ' '
  echo
  # shellcheck disable=SC2086  # TESTS is a list of paths, or nothing
  "$venv/bin/python" -m pytest -q -p no:cacheprovider $tests
}
