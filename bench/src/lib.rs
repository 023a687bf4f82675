//! `fm-bench` holds FM Relay's throughput and latency benchmarks (`benches/overhead.rs`; run
//! `cargo bench -p fm-bench`). They live in a crate of their own so the relay and the simulator
//! are built with production features only: `fm-relay`'s dev-dependencies enable tokio's
//! `test-util`, whose clock takes a lock on every `Instant::now()` and cost the relay about a
//! third of its throughput when the benchmark was part of that crate.
