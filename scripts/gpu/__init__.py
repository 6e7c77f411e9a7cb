"""Tools for a GPU host where the project is installed: the smoke test, the benchmark, its model builder and report."""
