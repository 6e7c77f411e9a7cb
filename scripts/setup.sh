#!/usr/bin/env bash
# Idempotent environment setup: Debian packages, one virtualenv with the project (editable) and every Python
# dependency (among them the embedded tritonserver, from nvidia-pytriton, which the launcher completes with the
# Python-backend stub for this interpreter when it first starts it), and a working perf_analyzer. Safe to run
# repeatedly: each step checks before it acts, and the Python install is skipped while requirements.txt
# and pyproject.toml's dependencies are unchanged.
#
# Each step that installs something says what and why, in one line; a run with nothing to do prints nothing.
# Afterwards `scripts/env.sh` (sourced) gives a shell the same environment the servers and tests use.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh" --no-activate

log() { printf '[setup] %s\n' "$*" >&2; }
# pip, minus the notes this machine's extra (local, partial) package indexes print for every package.
pip_quiet() { "$TD_VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }; }

# --- Debian packages: Triton's Python-backend stub links libpython; perf_analyzer links libb64; the playground's
# browser tests drive Debian's chromium (Playwright is pointed at it, so nothing is downloaded from a browser CDN);
# the tests give a frontend a host name with several addresses (a headless Service's) through nss_wrapper's hosts file.
PY_MM=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
apt_pkgs=()
for p in "libpython${PY_MM}" libb64-0d chromium libnss-wrapper; do
  dpkg -s "$p" >/dev/null 2>&1 || apt_pkgs+=("$p")
done
if [ ${#apt_pkgs[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  log "installing Debian packages ${apt_pkgs[*]} (Triton's Python stub links libpython, perf_analyzer libb64," \
    "the playground's browser tests run chromium, the DNS tests preload nss_wrapper)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# --- PostgreSQL: the scale-out tests and the job-store benchmark start throwaway servers of it on free loopback
# ports (a shared --job-store); Debian's package, whose own cluster, if it starts one, they leave alone.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && command -v apt-get >/dev/null; then
  log "installing Debian's postgresql (the scale-out tests and benchmarks start throwaway PostgreSQL servers)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# --- The virtualenv, keyed by this checkout's path, requirements.txt and the parts of pyproject.toml that say what
# to install, so an edit there (or another clone) triggers a reinstall, and an edit to the linter's settings does not.
stamp="$TD_VENV/.requirements.sha256"
if [ ! -x "$TD_VENV/bin/python" ]; then
  log "creating the virtualenv $TD_VENV (one per machine, shared by every checkout; TD_VENV moves it)"
  mkdir -p "$(dirname "$TD_VENV")"
  python3 -m venv "$TD_VENV"
fi
want=$("$TD_VENV/bin/python" - "$ROOT" <<'PY'
import hashlib, json, pathlib, sys
root = pathlib.Path(sys.argv[1])
text = (root / "pyproject.toml").read_text()
try:
    import tomllib
    data = tomllib.loads(text)
    text = json.dumps([data.get("build-system"), data.get("project"), data.get("tool", {}).get("setuptools")])
except ImportError:  # Python 3.10: the whole file
    pass
# The checkout's path too: the editable install points at one checkout, and another clone must re-point it.
print(hashlib.sha256((str(root.resolve()) + (root / "requirements.txt").read_text() + text).encode()).hexdigest())
PY
)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing the project (editable) and its Python dependencies from requirements.txt, with the sglang," \
    "test and bench extras (requirements or dependencies changed; first run: several minutes)"
  pip_quiet install -q --upgrade pip
  # The editable install is meant to let a checkout's own folders win, so setuptools' warning about it is muted.
  (cd "$ROOT" && PYTHONWARNINGS="ignore:Editable installation" pip_quiet install -q -r requirements.txt)
  echo "$want" >"$stamp"
fi

# --- perf_analyzer: the binary ships in the tritonclient 2.51.0 wheel, whose library pins clash with ours,
# so only the binary is taken out of it.
if [ ! -x "$TD_VENV/libexec/perf_analyzer" ]; then
  log "fetching perf_analyzer from the tritonclient 2.51.0 wheel (only the binary: the wheel's library pins clash with ours)"
  tmp=$(mktemp -d)
  pip_quiet download -q --no-deps --only-binary=:all: -d "$tmp" "tritonclient[all]==2.51.0"
  mkdir -p "$TD_VENV/libexec"
  "$TD_VENV/bin/python" - "$tmp" "$TD_VENV/libexec/perf_analyzer" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(f"{sys.argv[1]}/tritonclient-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/perf_analyzer"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  chmod +x "$TD_VENV/libexec/perf_analyzer"
  rm -rf "$tmp"
fi
if [ ! -x "$TD_VENV/bin/perf_analyzer" ]; then
  log "installing the perf_analyzer command (a wrapper that gives the binary its CUDA 12 runtime)"
  cat >"$TD_VENV/bin/perf_analyzer" <<'SH'
#!/usr/bin/env bash
# perf_analyzer from the tritonclient 2.51.0 wheel; it links libcudart.so.12 and libb64.
venv=$(cd "$(dirname "$0")/.." && pwd)
cudart=$(echo "$venv"/lib/python3*/site-packages/nvidia/cuda_runtime/lib)
export LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$venv/libexec/perf_analyzer" "$@"
SH
  chmod +x "$TD_VENV/bin/perf_analyzer"
fi
