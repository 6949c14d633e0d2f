//! Cross-service tests: real nats-server (test-support), real services run as tasks, real
//! file stores in temp dirs.

mod preprocess;
mod support;
mod train;
