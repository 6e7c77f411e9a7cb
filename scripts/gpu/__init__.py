"""The product's smoke test of a GPU host (``python -m scripts.gpu.smoke``) and the helpers it shares with the GPU
benchmark (``benchmarks/gpu``): engine parameters, starting the served stack, the host record, the results file,
and the builder of random-weight models of the published shapes."""
