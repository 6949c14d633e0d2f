//! What crosses between the device and the host, counted per thread.
//!
//! On a GPU every read of a tensor back to the host stalls the device and pays a transfer,
//! and a custom op run on host copies ([`crate::ops::OpsPath::HostKernels`]) pays two. The
//! generic path must make none inside a training step or a sliding-window evaluation except
//! reading its final result (the loss value, the label map); these counters prove it. Every
//! host read in this crate goes through the functions below (`clippy.toml` disallows the
//! direct `to_vec*`/`to_scalar`/`to_cpu_storage` calls elsewhere in the crate).
//!
//! The counters are per thread: candle runs an op, its custom-op kernels and its backward
//! pass on the calling thread, so a test sees exactly its own traffic.

use candle_core::{Device, Result, Tensor, WithDType};
use std::cell::Cell;

/// Running totals of this thread (see [`traffic`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTraffic {
    /// Round trips through the host in the middle of a computation: a custom op run on
    /// host copies of its inputs, or an intermediate tensor read back to the host.
    pub round_trips: u64,
    /// Final results read back to the host (the loss value of a step, a label map).
    pub result_reads: u64,
    /// Ops dispatched to a hand-written CPU kernel (forward passes; each one's backward
    /// pass is a kernel too).
    pub kernel_ops: u64,
}

impl HostTraffic {
    /// What happened between `before` and `self`.
    pub fn since(self, before: HostTraffic) -> HostTraffic {
        HostTraffic {
            round_trips: self.round_trips - before.round_trips,
            result_reads: self.result_reads - before.result_reads,
            kernel_ops: self.kernel_ops - before.kernel_ops,
        }
    }
}

thread_local! {
    static TRAFFIC: Cell<HostTraffic> = Cell::new(HostTraffic::default());
}

/// This thread's totals since it started.
pub fn traffic() -> HostTraffic {
    TRAFFIC.with(Cell::get)
}

fn bump(f: impl FnOnce(&mut HostTraffic)) {
    TRAFFIC.with(|c| {
        let mut t = c.get();
        f(&mut t);
        c.set(t);
    })
}

pub(crate) fn count_round_trip() {
    bump(|t| t.round_trips += 1)
}

pub(crate) fn count_kernel_op() {
    bump(|t| t.kernel_ops += 1)
}

/// A final result's values, flattened (counted as a result read).
pub(crate) fn result_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    bump(|c| c.result_reads += 1);
    read(t)
}

/// A final scalar result (counted as a result read).
pub(crate) fn result_scalar<T: WithDType>(t: &Tensor) -> Result<T> {
    bump(|c| c.result_reads += 1);
    #[allow(clippy::disallowed_methods)]
    t.to_device(&Device::Cpu)?.to_scalar::<T>()
}

/// An intermediate tensor's values, flattened, in the middle of a computation (counted as a
/// round trip: on a GPU its consumer then runs on the host, or sends it back).
pub(crate) fn intermediate_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    count_round_trip();
    read(t)
}

#[allow(clippy::disallowed_methods)]
fn read<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<T>()
}
