# Sourced by the project's scripts: where the virtualenv lives, and (unless --no-activate) put it first on PATH.
# The venv sits outside the checkout so every clone on a machine shares one install; TD_VENV overrides it.
TD_HOME=${TD_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/triton-diffusion}
TD_VENV=${TD_VENV:-$TD_HOME/venv}
export TD_HOME TD_VENV
if [ "${1:-}" != "--no-activate" ]; then
  export VIRTUAL_ENV="$TD_VENV"
  export PATH="$TD_VENV/bin:$PATH"
fi
