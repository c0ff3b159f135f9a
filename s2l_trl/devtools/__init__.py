"""Developer tools, not the training library: tiny local models and a managed `trl vllm-serve` process.

They let the README's main job, the tests and the benchmarks run on a CPU with no Hub access.
"""
