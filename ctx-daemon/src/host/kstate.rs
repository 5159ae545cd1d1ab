//! The kernel's own `context_tracking.state` per CPU, read from `/proc/kcore`, to cross-check
//! ctx's mirror. Diagnostics only (`ctx-daemon --check`, the VM tests): it needs root
//! (`CAP_SYS_RAWIO`), `/proc/kcore` and data symbols in `/proc/kallsyms` (`KALLSYMS_ALL`).
//!
//! Reading kcore copies kernel memory from this CPU; it sends no IPI. The word's layout (where
//! the state sits, its width, the state names) comes from BTF through [`CtLayout`]; nothing
//! here assumes bit positions.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use thiserror::Error;

use crate::host::btf::CtLayout;

#[derive(Debug, Error)]
pub enum KstateError {
    #[error("{what} (reading the kernel's own state needs root and /proc/kcore)")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "symbol {0} not in /proc/kallsyms (needs CONFIG_KALLSYMS_ALL and root with kptr_restrict < 2)"
    )]
    Symbol(&'static str),
    #[error("/proc/kcore: {0}")]
    Kcore(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KstateError {
    let what = what.into();
    move |source| KstateError::Io { what, source }
}

/// A loadable segment of kcore: kernel virtual addresses `[vaddr, vaddr+size)` at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    vaddr: u64,
    offset: u64,
    size: u64,
}

/// Parses the program headers of an ELF64 little-endian core file.
fn segments(
    head: &[u8],
    read_at: impl Fn(u64, usize) -> Option<Vec<u8>>,
) -> Result<Vec<Segment>, String> {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return Err("not an ELF64 little-endian file".into());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = u64_at(head, 32);
    let phentsize = u16_at(head, 54) as usize;
    let phnum = u16_at(head, 56) as usize;
    if phentsize < 56 {
        return Err(format!("program header size {phentsize}"));
    }
    let table = read_at(phoff, phentsize * phnum).ok_or("short read of program headers")?;
    let mut out = Vec::new();
    for i in 0..phnum {
        let p = &table[i * phentsize..(i + 1) * phentsize];
        let p_type = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        if p_type == 1 {
            out.push(Segment {
                offset: u64_at(p, 8),
                vaddr: u64_at(p, 16),
                size: u64_at(p, 32),
            });
        }
    }
    Ok(out)
}

/// Finds `names` in kallsyms text; returns their addresses in order.
fn symbols<const N: usize>(text: &str, names: [&'static str; N]) -> Result<[u64; N], KstateError> {
    let mut out = [None; N];
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == name)
            && out[i].is_none()
        {
            out[i] = u64::from_str_radix(addr, 16).ok();
        }
    }
    let mut res = [0u64; N];
    for i in 0..N {
        res[i] = out[i].ok_or(KstateError::Symbol(names[i]))?;
    }
    Ok(res)
}

pub struct KernelCtReader {
    kcore: File,
    segments: Vec<Segment>,
    /// Address of each possible CPU's `context_tracking.state`, by CPU id.
    state_addr: Vec<u64>,
    pub layout: CtLayout,
}

/// One CPU's word, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCtState {
    pub raw: u32,
    /// e.g. `CT_STATE_USER`.
    pub state: String,
    /// The RCU-watching counter above the state (and context-work) bits.
    pub watching: u32,
}

impl KernelCtReader {
    pub fn open(proc: &Path, layout: CtLayout, ncpus: usize) -> Result<Self, KstateError> {
        let kallsyms =
            std::fs::read_to_string(proc.join("kallsyms")).map_err(io("reading /proc/kallsyms"))?;
        // x86-64 links per-CPU variables at offsets from 0; each CPU's copy lives at its entry in
        // __per_cpu_offset plus that offset.
        let [ct, offsets] = symbols(&kallsyms, ["context_tracking", "__per_cpu_offset"])?;
        if ct == 0 || offsets == 0 {
            return Err(KstateError::Symbol(
                "context_tracking (address hidden: kptr_restrict)",
            ));
        }
        let kcore = File::open(proc.join("kcore")).map_err(io("opening /proc/kcore"))?;
        let read_at = |off: u64, len: usize| {
            let mut b = vec![0u8; len];
            kcore.read_exact_at(&mut b, off).ok().map(|()| b)
        };
        let head = read_at(0, 64)
            .ok_or_else(|| KstateError::Kcore("short read of the ELF header".into()))?;
        let segments = segments(&head, read_at).map_err(KstateError::Kcore)?;
        let mut r = Self {
            kcore,
            segments,
            state_addr: Vec::new(),
            layout,
        };
        let raw = r.read_virt(offsets, ncpus * 8)?;
        r.state_addr = raw
            .as_chunks::<8>()
            .0
            .iter()
            .map(|c| {
                u64::from_le_bytes(*c)
                    .wrapping_add(ct)
                    .wrapping_add(u64::from(r.layout.state_offset))
            })
            .collect();
        Ok(r)
    }

    fn read_virt(&self, addr: u64, len: usize) -> Result<Vec<u8>, KstateError> {
        let s = self
            .segments
            .iter()
            .find(|s| addr >= s.vaddr && addr + len as u64 <= s.vaddr + s.size)
            .ok_or_else(|| KstateError::Kcore(format!("address {addr:#x} not in any segment")))?;
        let mut b = vec![0u8; len];
        self.kcore
            .read_exact_at(&mut b, s.offset + (addr - s.vaddr))
            .map_err(io(format!("reading kernel address {addr:#x}")))?;
        Ok(b)
    }

    pub fn read(&self, cpu: u32) -> Result<KernelCtState, KstateError> {
        let addr = *self
            .state_addr
            .get(cpu as usize)
            .ok_or_else(|| KstateError::Kcore(format!("no per-CPU offset for CPU {cpu}")))?;
        let b = self.read_virt(addr, 4)?;
        let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        Ok(self.decode(raw))
    }

    pub fn decode(&self, raw: u32) -> KernelCtState {
        decode(&self.layout, raw)
    }
}

pub fn decode(layout: &CtLayout, raw: u32) -> KernelCtState {
    KernelCtState {
        raw,
        state: layout.state_name(raw).map_or_else(
            || format!("state {}", raw & layout.state_mask()),
            str::to_owned,
        ),
        watching: raw.checked_shr(layout.watching_start).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(work_bits: u32) -> CtLayout {
        CtLayout {
            state_offset: 8,
            state_bits: 2,
            states: vec![
                ("CT_STATE_KERNEL".into(), 0),
                ("CT_STATE_IDLE".into(), 1),
                ("CT_STATE_USER".into(), 2),
                ("CT_STATE_GUEST".into(), 3),
                ("CT_STATE_MAX".into(), 4),
            ],
            work_bits,
            watching_start: 2 + work_bits,
        }
    }

    #[test]
    fn decodes_with_the_btf_layout() {
        // 6.12 layout: RCU watching counter from bit 2.
        let s = decode(&layout(0), (7 << 2) | 2);
        assert_eq!((s.state.as_str(), s.watching), ("CT_STATE_USER", 7));
        // With one context-work bit (pending patches) the counter moves up a bit; the state
        // does not.
        let s = decode(&layout(1), (7 << 3) | (1 << 2) | 2);
        assert_eq!((s.state.as_str(), s.watching), ("CT_STATE_USER", 7));
    }

    #[test]
    fn errors_print_each_cause_once() {
        let e = KernelCtReader::open(Path::new("/nonexistent-proc"), layout(0), 1)
            .err()
            .expect("no /nonexistent-proc/kallsyms");
        let shown = crate::test_util::printed_once(e);
        assert!(
            shown.contains("/proc/kallsyms") && shown.contains("No such file"),
            "{shown}"
        );
        for e in [
            KstateError::Symbol("context_tracking"),
            KstateError::Kcore("address 0x1 not in any segment".into()),
        ] {
            crate::test_util::printed_once(e);
        }
    }

    #[test]
    fn kallsyms_and_elf() {
        let text = "0000000000031240 D context_tracking\nffffffff82a3c0a0 R __per_cpu_offset\n";
        assert_eq!(
            symbols(text, ["context_tracking", "__per_cpu_offset"]).unwrap(),
            [0x31240, 0xffff_ffff_82a3_c0a0]
        );
        assert!(symbols(text, ["nope"]).is_err());
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&1u32.to_le_bytes());
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes());
        ph[16..24].copy_from_slice(&0xffff_8880_0000_0000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        let segs = segments(&elf, |off, len| {
            (off == 64 && len == 56).then(|| ph.clone())
        })
        .unwrap();
        assert_eq!(
            segs,
            vec![Segment {
                vaddr: 0xffff_8880_0000_0000,
                offset: 0x1000,
                size: 0x10_0000
            }]
        );
    }
}
