pub mod bench;
pub mod bench_cores;
pub mod bench_e2e;
pub mod fleet;
pub mod plan;
pub mod run;
pub mod tail;
