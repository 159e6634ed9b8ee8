//! Benchmark harness (see ../shared/BENCH.md).
