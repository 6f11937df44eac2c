//! Benchmark programs for `scripts/bench`: the raw aws-sdk-rust SQS loop (the floor sluice is held
//! against) lives in `src/bin/`, the dispatcher-core micro-benchmarks in `benches/`.
