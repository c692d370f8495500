"""`make bench`: the numbers that matter for a scale-to-zero ComfyUI system, each measured
against a baseline in the same run. Benchmarks never fail the build; they report."""
