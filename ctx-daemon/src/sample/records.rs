//! The per-CPU records (`CTX_CPU`), copied out of the kernel with their sequence pairs checked.
//!
//! A per-CPU array lookup from user space is one `bpf(BPF_MAP_LOOKUP_ELEM)` syscall in which
//! the kernel copies each possible CPU's slot with plain loads; no other CPU is asked to do
//! anything, so no IPI is sent. (Reading a CPU's counters through perf or an `smp_call` would
//! interrupt the very CPU being watched.)

use aya::maps::{MapData, PerCpuArray};
use ctx_common::CpuRecord;
use ctx_common::programs::MAP_CPU;

use crate::host::system::mono_now_ns;
use crate::sample::SampleError;

/// Anything that yields one record per possible CPU, in possible-CPU order. The kernel map is
/// one; tests use fakes.
pub trait RecordSource {
    fn read(&mut self) -> Result<Vec<CpuRecord>, SampleError>;
}

impl RecordSource for PerCpuArray<MapData, CpuRecord> {
    fn read(&mut self) -> Result<Vec<CpuRecord>, SampleError> {
        let v = self.get(&0, 0).map_err(|source| SampleError::Read {
            map: MAP_CPU,
            source,
        })?;
        Ok(v.iter().copied().collect())
    }
}

impl<S: RecordSource + ?Sized> RecordSource for &mut S {
    fn read(&mut self) -> Result<Vec<CpuRecord>, SampleError> {
        (**self).read()
    }
}

/// One CPU's record as copied, with the `CLOCK_MONOTONIC` time taken just before the copy.
#[derive(Clone, Copy, Debug)]
pub struct CpuRead {
    pub cpu: u32,
    pub record: CpuRecord,
    pub read_ns: u64,
    /// The copy is not from this sweep: every retry caught the CPU mid-write, so the last
    /// consistent copy stands in.
    pub stale: bool,
}

/// Every possible CPU's record from one sweep, none of them torn.
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub cpus: Vec<CpuRead>,
    /// CPUs caught mid-write at the first copy (each was read again).
    pub torn: u32,
    /// CPUs still torn after every retry (served from an earlier copy).
    pub stale: u32,
}

/// Reads the records, retrying torn ones; keeps the last consistent copy of each CPU.
pub struct RecordReader<S> {
    source: S,
    /// Possible CPU ids, in the map's slot order.
    cpus: Vec<u32>,
    last_good: Vec<Option<(CpuRecord, u64)>>,
    pub retries: u32,
}

impl<S: RecordSource> RecordReader<S> {
    pub fn new(source: S, possible_cpus: Vec<u32>) -> Self {
        let n = possible_cpus.len();
        Self {
            source,
            cpus: possible_cpus,
            last_good: vec![None; n],
            retries: 3,
        }
    }

    pub fn cpus(&self) -> &[u32] {
        &self.cpus
    }

    /// Copies every CPU's record; the first copy starts at `t0` (`CLOCK_MONOTONIC`, read just
    /// before). A record caught mid-write is copied again (a writer holds it for well under a
    /// microsecond); if it stays torn, the previous consistent copy is used and flagged
    /// stale, so a sweep never yields a torn record.
    pub fn read(&mut self, t0: u64) -> Result<Records, SampleError> {
        let mut now = t0;
        let mut recs = self.source.read()?;
        if recs.len() != self.cpus.len() {
            return Err(SampleError::Shape {
                map: MAP_CPU,
                got: recs.len(),
                want: self.cpus.len(),
            });
        }
        let mut read_ns = vec![now; recs.len()];
        // At most one per possible CPU (8192).
        let torn =
            u32::try_from(recs.iter().filter(|r| !r.consistent()).count()).unwrap_or(u32::MAX);
        let mut attempt = 0;
        while attempt < self.retries && recs.iter().any(|r| !r.consistent()) {
            attempt += 1;
            now = mono_now_ns();
            let again = self.source.read()?;
            for (i, r) in again.into_iter().enumerate().take(recs.len()) {
                if !recs[i].consistent() {
                    recs[i] = r;
                    read_ns[i] = now;
                }
            }
        }
        let mut stale = 0;
        let mut cpus = Vec::with_capacity(recs.len());
        for (i, r) in recs.into_iter().enumerate() {
            let cpu = self.cpus[i];
            if r.consistent() {
                self.last_good[i] = Some((r, read_ns[i]));
                cpus.push(CpuRead {
                    cpu,
                    record: r,
                    read_ns: read_ns[i],
                    stale: false,
                });
            } else {
                stale += 1;
                let (record, read_ns) = self.last_good[i].unwrap_or_default();
                cpus.push(CpuRead {
                    cpu,
                    record,
                    read_ns,
                    stale: true,
                });
            }
        }
        Ok(Records { cpus, torn, stale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves canned reads in order.
    struct Script(Vec<Vec<CpuRecord>>);

    impl RecordSource for Script {
        fn read(&mut self) -> Result<Vec<CpuRecord>, SampleError> {
            Ok(if self.0.len() > 1 {
                self.0.remove(0)
            } else {
                self.0[0].clone()
            })
        }
    }

    fn rec(seq: u64, torn: bool) -> CpuRecord {
        let mut r = CpuRecord::default();
        r.main.seq_end = seq;
        r.main.seq_begin = if torn { seq + 1 } else { seq };
        r.main.counter = seq * 2;
        r
    }

    #[test]
    fn torn_records_are_read_again() {
        let s = Script(vec![
            vec![rec(1, false), rec(5, true)],
            vec![rec(1, false), rec(6, false)],
        ]);
        let mut sm = RecordReader::new(s, vec![0, 1]);
        let snap = sm.read(mono_now_ns()).unwrap();
        assert_eq!(snap.torn, 1);
        assert_eq!(snap.stale, 0);
        assert_eq!(snap.cpus[1].record.main.counter, 12);
    }

    #[test]
    fn persistently_torn_falls_back_to_last_good() {
        let s = Script(vec![
            vec![rec(1, false), rec(3, false)],
            vec![rec(2, false), rec(9, true)],
        ]);
        let mut sm = RecordReader::new(s, vec![0, 1]);
        sm.read(mono_now_ns()).unwrap();
        let snap = sm.read(mono_now_ns()).unwrap();
        assert_eq!(snap.stale, 1);
        assert!(snap.cpus[1].stale);
        assert_eq!(
            snap.cpus[1].record.main.counter, 6,
            "previous consistent copy"
        );
        assert!(snap.cpus.iter().all(|c| c.record.consistent()));
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let s = Script(vec![vec![rec(1, false)]]);
        let mut sm = RecordReader::new(s, vec![0, 1]);
        assert!(matches!(
            sm.read(mono_now_ns()),
            Err(SampleError::Shape {
                got: 1,
                want: 2,
                ..
            })
        ));
    }
}
