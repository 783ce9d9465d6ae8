"""The test suite. A package, so that its helper modules (arch_models, gguf_fuzz, reference_solvers,
rpc_links) import as ``tests.<name>``: from the tests themselves and from the benchmarks, which
run from the repository root as ``python -m benchmarks.<name>``."""
