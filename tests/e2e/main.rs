//! Cross-service tests: real nats-server (test-support), real services run as tasks, real
//! file stores in temp dirs; `stack` runs the built binaries as processes via `segtune up`.

mod broker;
mod cluster;
mod compose;
mod compose_engine;
mod confirm;
mod dataset;
mod demo;
mod faults;
mod preprocess;
mod pruning;
mod s3;
mod security;
mod stack;
mod support;
mod train;
