"""Earlier designs kept runnable for benchmarks only: nothing here is a serving mode."""
