"""Starting the product: a tritonserver over a model repository rendered for this host, and the frontend.

- ``repository``: which models to serve (``ModelSpec``) and the repository rendered for this host's GPUs.
- ``processes``: tritonserver and the frontend as subprocesses, waiting until they are ready, stopping them.
- ``triton_log``: what tritonserver's log says about models that failed to load.
- ``cli``: the serve command (``python -m diffusion_runtime.launcher``, ``scripts/serve.sh``).
- ``presets``: the seed deployment's launch scripts (``scripts/launch/*.sh``) as presets of the serve command.
"""
