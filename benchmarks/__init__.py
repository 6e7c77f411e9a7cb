"""The project's benchmarks and their committed results: what serving costs over the bare engine, on a CPU
(``benchmarks.cpu``) and on GPUs (``benchmarks.gpu``).

They measure the product; the product never imports them (the image the Dockerfile builds leaves them out). Run
them from the project root in its environment, on any host where the project is installed:
``benchmarks/cpu/run.sh``, ``python -m benchmarks.gpu.bench``; see ``benchmarks/README.md``. One statistics module
(``stats``) and one way of writing reports (``report``) serve both.
"""
