pub mod bench;
pub mod bench_e2e;
pub mod dashboard;
pub mod fleet;
pub mod k8s;
pub mod plan;
pub mod run;
pub mod tail;
