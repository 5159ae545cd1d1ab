//! Reading a running ctx-daemon's pinned maps through ctx's own library: the same loader,
//! sampler and model ctxtop uses, but with cumulative counters that the guest can read at the
//! exact moments it reads /proc/interrupts.

use std::path::Path;

use anyhow::{Context as _, bail};
use ctx::host::system::SysRoot;
use ctx::model::{Origin, Sample};
use ctx::probes::pins;
use ctx::session::{Attach, Session};

pub const PIN_DIR: &str = "/sys/fs/bpf/ctx";

pub struct Probe {
    session: Session,
}

impl Probe {
    /// Whether a daemon has finished attaching: its maps are pinned and its meta written.
    pub fn daemon_ready() -> anyhow::Result<bool> {
        Ok(pins::open_pinned(Path::new(PIN_DIR), &SysRoot::default())
            .context("opening ctx-daemon's pins")?
            .is_some())
    }

    /// Opens the daemon's pins. Never attaches: that would text-patch the kernel and IPI every
    /// CPU in the middle of a scenario.
    pub fn open() -> anyhow::Result<Self> {
        if !Self::daemon_ready()? {
            bail!("no ctx-daemon pins under {PIN_DIR}");
        }
        let session = Session::open(
            &Attach::Viewer {
                pin_dir: PIN_DIR.into(),
            },
            SysRoot::default(),
        )
        .context("opening ctx-daemon's pinned maps")?;
        if session.facts.origin != Origin::Pinned {
            bail!("ctx attached its own probes instead of reading ctx-daemon's pins");
        }
        Ok(Self { session })
    }

    pub fn sample(&mut self) -> anyhow::Result<Sample> {
        self.session
            .sample()
            .context("sampling ctx's per-CPU records")
    }
}
