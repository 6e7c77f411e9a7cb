#!/usr/bin/env bash
# Idempotent environment setup: Debian packages, one virtualenv with every Python dependency, the embedded
# tritonserver (from nvidia-pytriton) made runnable, and a working perf_analyzer. Safe to run repeatedly:
# each step checks before it acts, and the whole install is skipped while requirements.txt is unchanged.
#
# Prints nothing on success unless something was installed. Afterwards `scripts/env.sh` (sourced) gives a
# shell the same environment the servers and tests use.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/env.sh
source "$ROOT/scripts/env.sh" --no-activate

log() { printf '[setup] %s\n' "$*" >&2; }
# pip, minus the notes this machine's extra (local, partial) package indexes print for every package.
pip_quiet() { "$TD_VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }; }

# --- Debian packages: the stub links the system libpython; perf_analyzer links libb64.
PY_MM=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
apt_pkgs=()
for p in "libpython${PY_MM}" libb64-0d; do
  dpkg -s "$p" >/dev/null 2>&1 || apt_pkgs+=("$p")
done
if [ ${#apt_pkgs[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  log "installing Debian packages: ${apt_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# --- The virtualenv, keyed by the requirements so an edit triggers a reinstall.
stamp="$TD_VENV/.requirements.sha256"
want=$(sha256sum <"$ROOT/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$TD_VENV/bin/python" ]; then
  log "creating virtualenv $TD_VENV"
  mkdir -p "$(dirname "$TD_VENV")"
  python3 -m venv "$TD_VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python dependencies (first run: several minutes)"
  pip_quiet install -q --upgrade pip
  pip_quiet install -q -r "$ROOT/requirements.txt"
  echo "$want" >"$stamp"
fi

# --- The embedded tritonserver: its Python backend needs the stub built for this interpreter.
"$TD_VENV/bin/python" - <<'PY'
import shutil, sys, pathlib, pytriton
base = pathlib.Path(pytriton.__file__).parent / "tritonserver"
stub = base / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
dest = base / "backends" / "python" / "triton_python_backend_stub"
if not dest.exists() or dest.stat().st_size != stub.stat().st_size:
    shutil.copy2(stub, dest)
    dest.chmod(0o755)
PY

# --- perf_analyzer: the binary ships in the tritonclient 2.51.0 wheel, whose library pins clash with ours,
# so only the binary is taken out of it.
if [ ! -x "$TD_VENV/libexec/perf_analyzer" ]; then
  log "fetching perf_analyzer (tritonclient 2.51.0 wheel)"
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
