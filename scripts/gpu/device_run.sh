#!/usr/bin/env bash
# What runs on the remote GPU host (from the repository root, $OUT set by the remote command runner):
#   bash scripts/gpu/device_run.sh [bench_gpu.py options, e.g. --plan image --engines sglang,diffusers]
# Unpacks the sent .gpu-pack/*.tar.xz into a prefix (skipped for archives an earlier command already unpacked there),
# installs the packed distributions the host lacks into PREFIX/site, puts Triton, the sgl_kernel stand-in and
# the project on the paths, checks the imports, then runs bench_gpu.py within the command's time limit and leaves
# results.json, device_run.log, install.json and logs.tar.xz (Triton/frontend/model-build logs) in $OUT.
#
# TD_LOCAL=1 TD_ASSETS=<dir>: use this interpreter's own packages and Triton (a CPU dry run with the project venv).
# TD_BUDGET: seconds the whole script may take (default 570: the runner stops a command at 600 s).
# TD_SETUP_ONLY=1: stop once the environment is set up (for checking the archives on another machine).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-/tmp/td-gpu-out}
PREFIX=${TD_PREFIX:-/tmp/td-gpu}
PY=${TD_PYTHON:-python3}
WORK=${TD_WORK:-/tmp/td-gpu-work}
BUDGET=${TD_BUDGET:-570}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/device_run.log") 2>&1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[device_run +$(elapsed)s] $*"; }

say "host $(hostname); GPUs: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tr '\n' ';')"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 SGLANG_DISABLE_CUDNN_CHECK=1
# Multi-GPU hosts here must never use NVLink multicast.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

if [ "${TD_LOCAL:-0}" = 1 ]; then
  ASSETS=${TD_ASSETS:?TD_ASSETS: a folder with tiny-flux/ and tiny-wan-t2v/ tokenizers}
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  mkdir -p "$PREFIX"
  for archive in "$ROOT"/.gpu-pack/*.tar.xz; do
    [ -e "$archive" ] || { say "no archives in .gpu-pack/: send them along (scripts/gpu/pack.sh builds them)"; exit 2; }
    name=$(basename "$archive" .tar.xz)
    sum=$(sha256sum "$archive" | cut -c1-16)
    if [ "$(cat "$PREFIX/$name/.sha" 2>/dev/null)" != "$sum" ]; then
      rm -rf "${PREFIX:?}/$name" && mkdir -p "$PREFIX/$name"
      tar -xJf "$archive" -C "$PREFIX/$name" && echo "$sum" >"$PREFIX/$name/.sha"
    fi
  done
  say "unpacked: $(cd "$PREFIX" && ls -d */ | tr -d '/' | tr '\n' ' ')"
  rm -rf "$PREFIX/site"
  opts=$(ls -d "$PREFIX"/*/opt 2>/dev/null)
  # shellcheck disable=SC2086
  "$PY" "$ROOT/scripts/gpu/install_pack.py" "$PREFIX/site" $opts >"$OUT/install.json" || { say "install_pack failed"; cat "$OUT/install.json"; exit 2; }
  say "installed from the pack: $("$PY" -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['from_pack']))" "$OUT/install.json")"
  ASSETS=$PREFIX/py/assets
  # Triton's Python stub runs its embedded interpreter isolated (PYTHONPATH is ignored): it takes sys.prefix from
  # the `python3` first on PATH, which serve.stack_environment makes this interpreter's folder. So the packed
  # files go on sys.path through a virtualenv over the host's interpreter whose .pth puts them first (numpy<2
  # must shadow the host's numpy 2) and then adds the host's own site-packages (torch, transformers, ...).
  VENV=$PREFIX/venv
  device_sites=$("$PY" -c "import site, sys; print(' '.join(repr(p) for p in site.getsitepackages()))")
  [ -x "$VENV/bin/python" ] || "$PY" -m venv --without-pip "$VENV" || { say "could not create $VENV"; exit 2; }
  venv_site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  first="'$PREFIX/site'"
  [ -d "$PREFIX/sglang" ] && first="$first, '$ROOT/scripts/gpu/standin'"  # sgl_kernel stand-in for SGLang
  first="$first, '$PREFIX/triton', '$ROOT'"  # pytriton/ (the Triton files) and the project
  # Host packages built for numpy 2 break under numpy 1.26 (seen: SciPy's np.long, JAX's extension, which
  # diffusers reaches through Flax). transformers and diffusers import such optional packages only where
  # importlib.util.find_spec finds them, so hide them (None in sys.modules: find_spec answers None, an import raises
  # ImportError). Nothing on the measured paths (torch, diffusers, SGLang, the frontend) needs them.
  hidden=$(printf "'%s', " ${TD_HIDE_MODULES:-scipy sklearn jax jaxlib flax optax orbax chex onnx onnxruntime \
    pandas numba skimage matplotlib cv2 cupy tensorstore tensorflow})
  echo "import sys, site; sys.path[:0] = [$first]; [site.addsitedir(p) for p in (${device_sites// /, },)]; sys.modules.update(dict.fromkeys(($hidden), None))" >"$venv_site/00-td-gpu.pth"
  PY=$VENV/bin/python
  [ -x "$PREFIX/ffmpeg/ffmpeg/ffmpeg" ] && export IMAGEIO_FFMPEG_EXE="$PREFIX/ffmpeg/ffmpeg/ffmpeg"

  # The stub links libpython3.12: serve.find_tritonserver puts this interpreter's LIBDIR first; check it resolves.
  stub=$PREFIX/triton/pytriton/tritonserver/backends/python/triton_python_backend_stub
  libdir=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')")
  if LD_LIBRARY_PATH="$libdir:$PREFIX/triton/nvidia_pytriton.libs" ldd "$stub" | grep -q "not found"; then
    found=$(find /usr/lib /usr/local /opt /root -name 'libpython3.12.so.1.0' 2>/dev/null | head -1)
    say "libpython3.12 not in LIBDIR ($libdir); using ${found:-nothing found}"
    [ -n "$found" ] && export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  LD_LIBRARY_PATH="$libdir:$PREFIX/triton/nvidia_pytriton.libs:${LD_LIBRARY_PATH:-}" ldd "$stub" | grep -E "python|not found"
fi

[ "${TD_SETUP_ONLY:-0}" = 1 ] && { say "set up (TD_SETUP_ONLY): $PY"; exit 0; }

# Everything the served stack and the engines import, before any minutes go into models.
"$PY" - <<'PY' || { say "import check failed"; exit 3; }
import importlib, importlib.util
mods = ["numpy", "torch", "PIL", "fastapi", "uvicorn", "pydantic", "multipart", "httpx", "tritonclient.grpc.aio",
        "tritonclient.grpc.model_config_pb2", "prometheus_client", "diffusers", "transformers", "imageio_ffmpeg",
        "diffusion_runtime.serve", "openai_frontend.app", "pytriton"]
if importlib.util.find_spec("sglang") is not None:
    mods += ["sglang", "sglang.multimodal_gen"]
    import torch
    if torch.cuda.is_available():  # SGLang imports it on CUDA only (the real wheel needs libcuda)
        mods.append("sgl_kernel")
for name in mods:
    module = importlib.import_module(name)
    print(f"  {name:36s} {getattr(module, '__version__', '')} {getattr(module, '__file__', '')}")
if importlib.util.find_spec("sglang") is not None:
    from sglang.multimodal_gen import DiffGenerator  # noqa: F401
# The classes the model builder and the engines resolve lazily (diffusers imports a module per class).
from diffusers import AutoencoderKL, AutoencoderKLWan, FluxPipeline, FluxTransformer2DModel, WanPipeline  # noqa: F401
from diffusers import WanTransformer3DModel, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler  # noqa: F401
from transformers import CLIPTextModel, T5EncoderModel, UMT5EncoderModel, AutoTokenizer  # noqa: F401
import numpy
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: the Triton 2.51 stub needs numpy<2"
import imageio_ffmpeg
try:
    print("  ffmpeg", imageio_ffmpeg.get_ffmpeg_exe())
except Exception as exc:
    print("  ffmpeg: none (video encoding unavailable):", exc)
PY
say "imports ok"

if [ "${TD_SDPA_CHECK:-0}" = 1 ] && [ "${TD_LOCAL:-0}" != 1 ]; then
  say "attention/matmul kernels: the bench's environment, then the stubs' old LD_LIBRARY_PATH (LIBDIR first)"
  "$PY" "$ROOT/scripts/gpu/sdpa_check.py" plain 2>&1 | tail -1
  LD_LIBRARY_PATH="$libdir:$PREFIX/triton/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$PY" "$ROOT/scripts/gpu/sdpa_check.py" stub-libdir-first 2>&1 | tail -1
  LD_LIBRARY_PATH="$PREFIX/triton/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$PY" "$ROOT/scripts/gpu/sdpa_check.py" stub-now 2>&1 | tail -1
fi

left=$(( BUDGET - $(elapsed) - 25 ))
timeout --signal=INT --kill-after=15 "$((left + 10))" \
  "$PY" "$ROOT/scripts/gpu/bench_gpu.py" --assets "$ASSETS" --out "$OUT" --work "$WORK" --deadline "$left" "$@"
rc=$?
say "bench_gpu.py exited with $rc"
nvidia-smi --query-gpu=index,memory.used,temperature.gpu,clocks.sm --format=csv,noheader 2>/dev/null
(cd "$WORK" && find . \( -name '*.log' -o -name 'sample-*' \) -size -50M | tar -cJf "$OUT/logs.tar.xz" -T -) 2>/dev/null
say "done"
exit $rc
