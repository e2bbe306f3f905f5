pub mod bench;
pub mod fleet;
pub mod run;
pub mod tail;
