//! Measuring tools the benchmark shares: rates, percentiles, machine-wide
//! CPU use from `/proc/stat`, a process's peak RSS from `/proc/PID/status`,
//! and a description of the machine.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How much work a phase did, how fast, and how busy the machine was.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    pub count: u64,
    pub secs: f64,
    pub per_sec: f64,
    /// Share of all cores busy during the phase (1.0 = every core, all the
    /// time), whoever used them: this process, the services, other users.
    pub cpu_busy: f64,
}

impl Rate {
    pub fn new(count: u64, elapsed: Duration, cpu: &CpuSample) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            count,
            secs,
            per_sec: if secs > 0.0 { count as f64 / secs } else { 0.0 },
            cpu_busy: cpu.busy_since(),
        }
    }
}

/// Times a phase and samples the machine's CPU use around it.
pub struct Stopwatch {
    started: Instant,
    /// The same moment on the wall clock, which the pipeline's own
    /// timestamps use.
    started_at: DateTime<Utc>,
    cpu: CpuSample,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            cpu: CpuSample::now(),
            started_at: Utc::now(),
            started: Instant::now(),
        }
    }

    pub fn rate(&self, count: u64) -> Rate {
        Rate::new(count, self.started.elapsed(), &self.cpu)
    }

    /// The rate of `count` things, the last of which was done at `end`
    /// (a timestamp the pipeline wrote, on this machine's clock).
    pub fn rate_until(&self, count: u64, end: DateTime<Utc>) -> Rate {
        let elapsed = (end - self.started_at).to_std().unwrap_or_default();
        Rate::new(count, elapsed, &self.cpu)
    }
}

/// Machine-wide CPU time counters (clock ticks) from the first line of
/// `/proc/stat`; zeros where it is not readable.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    busy: u64,
    total: u64,
}

impl CpuSample {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice;
        // guest time is already counted in user.
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Self {
            busy: total.saturating_sub(idle),
            total,
        }
    }

    /// The busy share of all cores between this sample and now.
    pub fn busy_since(&self) -> f64 {
        let now = Self::now();
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        now.busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

/// The busy share of all cores over the next second (this sleeps).
pub fn busy_in_the_next_second() -> f64 {
    let before = CpuSample::now();
    std::thread::sleep(Duration::from_secs(1));
    before.busy_since()
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// p50/p95/p99/max of a set of samples, in milliseconds (nearest rank).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.retain(|sample| sample.is_finite());
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1]
        };
        Self {
            samples: samples.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: samples[samples.len() - 1],
        }
    }
}

/// A field of `/proc/PID/status` in KiB (`VmHWM` is the peak resident set).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// User plus system CPU seconds a process has used, from `/proc/PID/stat`.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust targets.
    Some((utime + stime) / 100.0)
}

/// What the figures were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, model)| model.trim().into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(samples);
        assert_eq!(
            (p.samples, p.p50, p.p95, p.p99, p.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
    }

    #[test]
    fn percentiles_of_nothing_are_zero_with_no_samples() {
        assert_eq!(Percentiles::of(vec![f64::NAN]), Percentiles::default());
    }

    #[test]
    fn this_process_has_a_peak_rss_and_cpu_time() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmHWM").is_some_and(|kib| kib > 0));
        assert!(proc_cpu_secs(pid).is_some());
        assert!(proc_status_kib(pid, "NoSuchField").is_none());
    }
}
