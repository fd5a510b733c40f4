//! What the bench reads from the machine: `/proc` for memory and CPU time, the machine's
//! description for the report, and the open-file limit.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

/// A process's resident set size (`VmRSS`), KiB.
pub(crate) fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Memory the kernel could still hand out (`MemAvailable`), KiB.
pub(crate) fn mem_available_kib() -> anyhow::Result<u64> {
    status_field("/proc/meminfo", "MemAvailable:")
}

fn status_field(file: &str, name: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no {name} in {file}"))
}

/// CPU time a process has used (user + system), seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let times = cpu_times(pid)?;
    Ok(times.user + times.system)
}

/// CPU time a process has used, seconds: in user space and in the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTimes {
    pub(crate) user: f64,
    pub(crate) system: f64,
}

/// [`CpuTimes`] of process `pid`.
pub(crate) fn cpu_times(pid: u32) -> anyhow::Result<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed stat")?
        .1
        .split_whitespace()
        .collect();
    let seconds = |field: &str| -> anyhow::Result<f64> {
        Ok(field.parse::<u64>()? as f64 / clock_ticks() as f64)
    };
    Ok(CpuTimes {
        user: seconds(fields[11])?,
        system: seconds(fields[12])?,
    })
}

/// CPU time the whole machine spent outside idle (user, nice, system, steal; interrupt
/// time is left out, since loopback traffic is processed there), seconds.
pub(crate) fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = fields[0] + fields[1] + fields[2] + fields.get(7).copied().unwrap_or(0);
    Ok(busy as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// The machine, for the report.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// CPU model name.
    pub(crate) cpu: String,
    /// Logical cores available to this process.
    pub(crate) cores: usize,
    /// Kernel release.
    pub(crate) kernel: String,
    /// Total memory, GiB.
    pub(crate) memory_gib: f64,
    /// The 1-minute load average when the run started.
    pub(crate) load_average: String,
    /// The bench's scheduling niceness (its servers inherit it).
    pub(crate) nice: i64,
}

impl Machine {
    /// Reads the machine's description.
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or("unknown", |(_, model)| model.trim())
            .to_owned();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |text| text.trim().to_owned());
        let memory_gib = status_field("/proc/meminfo", "MemTotal:")
            .map_or(0.0, |kib| kib as f64 / (1024.0 * 1024.0));
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default();
        let nice = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                let fields: Vec<String> = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                fields.get(16)?.parse().ok()
            })
            .unwrap_or(0);
        Self {
            nice,
            cpu,
            cores: cores(),
            kernel,
            memory_gib,
            load_average,
        }
    }
}

/// Logical cores available to this process.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Raises the open-file limit so `needed` descriptors fit, in this process and the
/// servers it starts (they inherit it): the soft limit up to the hard one, and the hard
/// one too where the process may (root). Returns the soft limit in force.
pub(crate) fn raise_open_files(needed: u64) -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return 1024;
    };
    if needed > hard {
        // Only a privileged process may raise the hard limit, and never past nr_open.
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(needed);
        let target = needed.min(ceiling);
        if Resource::NOFILE.set(target, target).is_ok() {
            return target;
        }
    }
    if soft < hard.min(needed.max(soft)) {
        let _ = Resource::NOFILE.set(hard.min(needed.max(soft)), hard);
    }
    Resource::NOFILE.get().map_or(soft, |(soft, _)| soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(vm_rss_kib(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(mem_available_kib().unwrap() > 0);
        assert!(machine_busy_seconds().unwrap() > 0.0);
    }
}
