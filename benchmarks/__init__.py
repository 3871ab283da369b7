"""Re-runnable quality benchmarks of mmldm (``python -m benchmarks.<name> --help``)."""
