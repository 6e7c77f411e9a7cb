# The product on NVIDIA's Triton image: tritonserver comes from the base image (so the serve command uses it
# instead of the embedded one), the project and SGLang's diffusion stack are installed with pip.
#   docker build -t triton-diffusion .
#   docker run --gpus all -p 8000:8000 -e TRITON_DIFFUSION_API_KEYS=secret \
#       -v $HOME/.cache/huggingface:/root/.cache/huggingface triton-diffusion --image-model black-forest-labs/FLUX.1-dev
# The API binds 0.0.0.0 inside the container, so it demands API keys (or --no-auth to allow anyone).
# The product only (no scripts/, tests/ or benchmarks/). Any scripts/serve.sh option can follow the image name; the launch presets work too:
#   docker run ... --entrypoint python3 triton-diffusion -m diffusion_runtime.launcher.presets t2v launch --wan-size 14b
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.10-py3
FROM ${TRITON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    XDG_DATA_HOME=/var/lib \
    TD_HOME=/var/cache/triton-diffusion \
    PYTHONPATH=/opt/triton-diffusion

WORKDIR /opt/triton-diffusion
COPY pyproject.toml setup.py MANIFEST.in README.md requirements.txt ./
COPY diffusion_runtime diffusion_runtime
COPY openai_frontend openai_frontend
COPY model_repository model_repository
# The project with its SGLang extra, held to requirements.txt's pins (as constraints, which carry no extras). The
# image brings its own tritonserver, so perf_analyzer's CUDA 12 runtime and the test tools are left out.
RUN grep -E '^[A-Za-z]' requirements.txt \
        | grep -v -E '^(nvidia-cuda-runtime-cu12|schemathesis)' \
        | sed -E 's/\[[^]]*\]//' > constraints.txt \
    && python3 -m pip install -c constraints.txt -e ".[sglang]"

# Media and video job records live here; mount a volume to keep them.
VOLUME ["/var/lib/triton-diffusion"]
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "diffusion_runtime.launcher", "--host", "0.0.0.0", "--port", "8000"]
CMD []
