//! Bits shared by the binaries' command lines.

use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// Parses `10ms`, `1s`, `2.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    // `try_from`: `1e30` seconds does not fit a Duration, and `from_secs_f64` would panic.
    let secs =
        |v: f64| Duration::try_from_secs_f64(v).map_err(|_| format!("invalid duration {s:?}"));
    let d = if let Ok(v) = s.parse::<f64>() {
        secs(v)?
    } else if let Some(v) = s.strip_suffix('s').and_then(|v| v.parse::<f64>().ok()) {
        secs(v)?
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 10ms, 1s, 2.5s"))?
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be above zero"));
    }
    Ok(d)
}

/// The shortest sample interval: below it sweeps run back to back and burn a housekeeping CPU.
pub const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(1);
/// The longest: beyond it the sampler's staleness window (ten intervals) stops meaning much.
pub const MAX_SAMPLE_INTERVAL: Duration = Duration::from_secs(60);

/// A duration within `[MIN_SAMPLE_INTERVAL, MAX_SAMPLE_INTERVAL]`.
pub fn parse_sample_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(MIN_SAMPLE_INTERVAL..=MAX_SAMPLE_INTERVAL).contains(&d) {
        return Err(format!(
            "sample interval {s:?} is outside {}..={}",
            humantime::format_duration(MIN_SAMPLE_INTERVAL),
            humantime::format_duration(MAX_SAMPLE_INTERVAL)
        ));
    }
    Ok(d)
}

/// Logs to stderr without timestamps or colour when stderr is not a terminal: journald adds its
/// own timestamps, and escape codes would end up in the journal. `CTX_LOG` (or `RUST_LOG`) sets
/// the filter.
pub fn init_logging(default: &str) {
    let filter = std::env::var("CTX_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let tty = crate::host::system::is_tty(libc::STDERR_FILENO);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty)
        .with_target(false);
    // Bridges the `log` records aya and aya-log emit.
    let _ = tracing_log::LogTracer::init();
    if tty {
        let _ = builder.try_init();
    } else {
        let _ = builder.without_time().try_init();
    }
}

/// Common start of both binaries: logging, then keeping khugepaged off ctx's own memory (a
/// collapse ends in an IPI to every CPU, the `nohz_full` ones included), then `run`, whose error
/// is printed as `NAME: error: cause: cause...` with a failure exit.
pub fn main_with(
    name: &str,
    default_log: &str,
    run: impl FnOnce() -> anyhow::Result<()>,
) -> std::process::ExitCode {
    init_logging(default_log);
    if let Err(e) = crate::host::system::exclude_from_thp() {
        tracing::warn!(
            "cannot opt out of transparent huge pages ({e}): khugepaged may IPI every CPU when \
             it collapses this process's memory"
        );
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1e30").is_err(), "too large, not a panic");
        assert!(parse_duration("inf").is_err());
    }

    #[test]
    fn sample_interval_bounds() {
        assert!(parse_sample_interval("1ms").is_ok());
        assert!(parse_sample_interval("60s").is_ok());
        for bad in ["1ns", "999us", "61s", "100000000000", "1e30"] {
            assert!(parse_sample_interval(bad).is_err(), "{bad}");
        }
    }
}
