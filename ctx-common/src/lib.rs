//! Shared by ctx's eBPF programs and its user space: the seed encoding, the per-CPU record, the
//! transitions the programs apply to it, and the object's maps and hooks by name. One
//! definition for both sides.
#![no_std]

pub mod arrival;
pub mod encoding;
pub mod programs;
pub mod record;
pub mod writer;

pub use encoding::{CpuState, SeedState, Verdict};
pub use record::{
    ABI_VERSION, Arrival, Config, CpuRecord, IrqKind, IrqPart, LastEvent, Ledger, META_MAGIC,
    MainPart, Meta, NmiPart, Residency, Source,
};
