//! Integration tests of the controller against a real nats-server, with the test playing
//! trainer and evaluator over the bus. `TEST_LOG=1` shows the services' logs.

mod common;
mod dataset;
mod duplicates;
mod extend;
mod failures;
mod lifecycle;
mod pruning;
mod restart;
mod submissions;
