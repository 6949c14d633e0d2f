//! Byte-mutation fuzzing of every protocol decoder on stable Rust: the
//! checked-in golden payloads, mutated (bytes set, bits flipped, MessagePack length prefixes
//! and markers planted, ranges inserted, removed or cut), and arbitrary bytes, decoded as
//! every message type. Each decode must return (never panic) within 1 s, allocate no single
//! block over 1 MiB + 64 × the input (a length prefix claiming 4 G elements must not
//! reserve them), and a decoded value must encode again.
//!
//! Runs `PROPTEST_CASES` cases (default 1000) in the normal suite;
//! `SEGTUNE_FUZZ_SECS=600 cargo test -p protocol --test fuzz -- --nocapture` runs for ten
//! minutes and prints the number of cases.

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use protocol::{
    DatasetEvent, DatasetFailed, DatasetReady, JobFailed, Manifest, PreprocessRequest, Progress,
    Reward, StudyEvent, StudySpec, TrainJob, Trained,
};
use serde::{Serialize, de::DeserializeOwned};
use test_support::fuzz::{self, LargestAlloc, hex};

#[global_allocator]
static ALLOCATOR: LargestAlloc = LargestAlloc;

const TIME_LIMIT: Duration = Duration::from_secs(1);

const GOLDEN: &[&[u8]] = &[
    include_bytes!("../golden/dataset_failed.msgpack"),
    include_bytes!("../golden/dataset_ready.msgpack"),
    include_bytes!("../golden/job_failed.msgpack"),
    include_bytes!("../golden/manifest.msgpack"),
    include_bytes!("../golden/preprocess_request.msgpack"),
    include_bytes!("../golden/progress.msgpack"),
    include_bytes!("../golden/reward.msgpack"),
    include_bytes!("../golden/study_event.msgpack"),
    include_bytes!("../golden/study_spec.msgpack"),
    include_bytes!("../golden/train_job.msgpack"),
    include_bytes!("../golden/trained.msgpack"),
];

/// MessagePack markers worth planting: containers and strings with 32-bit lengths (then
/// 0xffffffff), nil, bool, ext types, floats, negative fixints.
const MARKERS: &[&[u8]] = &[
    &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32 of 4 G
    &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32 of 4 G
    &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32 of 4 G
    &[0xc6, 0xff, 0xff, 0xff, 0xff],       // bin32 of 4 G
    &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], // ext32
    &[0xdc, 0xff, 0xff],                   // array16
    &[0xc0],                               // nil
    &[0xc3],                               // true
    &[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], // f64 NaN
    &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // u64::MAX
    &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],    // i64::MIN
    &[0xe0],                               // -32
    &[0x91],                               // fixarray of 1
    &[0x81],                               // fixmap of 1
    &[0xa0],                               // ""
];

#[derive(Debug, Clone)]
enum Mutation {
    Set(Index, u8),
    Flip(Index, u8),
    Plant(Index, Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, m)| Mutation::Plant(i, m)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    match m {
        Mutation::Set(i, b) => bytes[i.index(len)] = *b,
        Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Plant(i, m) => {
            let marker = MARKERS[m.index(MARKERS.len())];
            let at = i.index(len);
            let end = (at + marker.len()).min(len);
            bytes.splice(at..end, marker.iter().copied());
        }
        Mutation::Insert(i, b) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
    }
}

#[derive(Debug, Clone)]
enum Input {
    Mutated(Index, Vec<Mutation>),
    Arbitrary(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (any::<Index>(), prop::collection::vec(mutation(), 1..8))
            .prop_map(|(g, m)| Input::Mutated(g, m)),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Input::Arbitrary),
    ]
}

fn build(input: &Input) -> Vec<u8> {
    match input {
        Input::Arbitrary(b) => b.clone(),
        Input::Mutated(g, ms) => {
            let mut bytes = GOLDEN[g.index(GOLDEN.len())].to_vec();
            for m in ms {
                apply(&mut bytes, m);
            }
            bytes
        }
    }
}

/// Decodes `bytes` as `T`: returns within the time limit, allocates within the bound, and
/// anything decoded encodes again.
fn check_as<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<(), String> {
    let what = std::any::type_name::<T>();
    let bound = (1 << 20) + 64 * bytes.len();
    let fuzz::Measured {
        value: decoded,
        elapsed,
        largest_alloc: largest,
    } = fuzz::measure(|| protocol::decode::<T>(bytes));
    if elapsed > TIME_LIMIT {
        return Err(format!("{what}: took {elapsed:?}"));
    }
    if largest > bound {
        return Err(format!(
            "{what}: allocated {largest} bytes at once (bound {bound})"
        ));
    }
    match decoded {
        Ok(v) => protocol::encode(&v)
            .map(|_| ())
            .map_err(|e| format!("{what}: decoded but does not encode: {e}")),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("cannot decode") {
                Ok(())
            } else {
                Err(format!("{what}: error without context: {msg}"))
            }
        }
    }
}

/// Every message type a service decodes from the bus or the store.
fn check_all(bytes: &[u8]) -> Result<(), String> {
    check_as::<PreprocessRequest>(bytes)?;
    check_as::<DatasetEvent>(bytes)?;
    check_as::<DatasetReady>(bytes)?;
    check_as::<DatasetFailed>(bytes)?;
    check_as::<StudySpec>(bytes)?;
    check_as::<TrainJob>(bytes)?;
    check_as::<Progress>(bytes)?;
    check_as::<Trained>(bytes)?;
    check_as::<Reward>(bytes)?;
    check_as::<JobFailed>(bytes)?;
    check_as::<StudyEvent>(bytes)?;
    check_as::<Manifest>(bytes)
}

#[test]
fn mutated_messages_never_panic_hang_or_over_allocate() {
    for g in GOLDEN {
        check_all(g).unwrap();
    }
    fuzz::run("protocol", 1000, input(), |input| {
        let bytes = build(&input);
        check_all(&bytes).map_err(|e| TestCaseError::fail(format!("{e}\ninput: {}", hex(&bytes))))
    });
}

/// Inputs singled out by design, kept as named cases.
mod regressions {
    use super::*;

    /// Length prefixes claiming 4 G elements must not be reserved up front.
    #[test]
    fn huge_length_prefixes() {
        for marker in &MARKERS[..5] {
            let mut bytes = vec![0x81, 0xa6];
            bytes.extend_from_slice(b"errors");
            bytes.extend_from_slice(marker);
            assert_eq!(check_all(&bytes), Ok(()), "{}", hex(&bytes));
            assert_eq!(check_all(marker), Ok(()), "{}", hex(marker));
        }
    }
}
