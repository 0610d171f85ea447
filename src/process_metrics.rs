//! The standard `process_*` metrics (as every Prometheus client library names them),
//! read from `/proc/self` at each scrape: resident and virtual memory, open and maximum
//! descriptors, CPU seconds, threads, start time. The soak and the benchmarks read apilb's
//! own numbers from here.
//!
//! Owns only these reads: a few small files, one directory listing (`/proc/self/fd`), no
//! allocation worth counting. A file that cannot be read leaves its metric out of that
//! scrape; it never fails the scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// The figures of one scrape.
#[derive(Debug, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub threads: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses: everything up to the last `)`), numbered as in proc(5) from field 3.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Reads the figures now.
pub fn read() -> Process {
    let page = Some(rustix::param::page_size() as f64).filter(|&v| v > 0.0);
    let tick = Some(rustix::param::clock_ticks_per_second() as f64).filter(|&v| v > 0.0);
    let mut p = Process::default();
    if let (Ok(statm), Some(page)) = (std::fs::read_to_string("/proc/self/statm"), page) {
        let mut f = statm.split_whitespace().map(|v| v.parse::<f64>().ok());
        p.virtual_bytes = f.next().flatten().map(|v| v * page);
        p.resident_bytes = f.next().flatten().map(|v| v * page);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // Less one: the directory's own descriptor, open while it is listed.
        p.open_fds = Some(dir.count().saturating_sub(1) as f64);
    }
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    // `None` is unlimited, exported as +Inf.
    p.max_fds = Some(lim.current.map_or(f64::INFINITY, |v| v as f64));
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        if let (Some(f), Some(tick)) = (stat_fields(&stat), tick) {
            // proc(5): utime 14, stime 15, num_threads 20, starttime 22; f[0] is field 3.
            let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            if let (Some(u), Some(s)) = (field(14), field(15)) {
                p.cpu_seconds = Some((u + s) / tick);
            }
            p.threads = field(20);
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if let (Some(start), Some(boot)) = (field(22), boot) {
                p.start_time_seconds = Some(boot + start / tick);
            }
        }
    }
    p
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<f64>,
) -> Result<(), std::fmt::Error> {
    let Some(v) = value else { return Ok(()) };
    let g = ConstGauge::new(v);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = read();
        if let Some(v) = p.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?)?;
        }
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds,
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit)",
            p.max_fds,
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads",
            p.threads,
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            p.start_time_seconds,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = read();
        assert!(p.resident_bytes.is_some_and(|v| v > 1e5), "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes, "{p:?}");
        let before = p.open_fds.unwrap();
        let _files: Vec<_> = (0..50)
            .map(|_| std::fs::File::open("/proc/self/statm").unwrap())
            .collect();
        assert!(read().open_fds.unwrap() >= before + 40.0);
        assert!(p.threads.is_some_and(|t| t >= 1.0), "{p:?}");
        assert!(p.cpu_seconds.is_some(), "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }

    #[test]
    fn stat_fields_survive_a_name_with_parentheses() {
        let f = stat_fields("42 (a) b (c)) S 1 2 3").unwrap();
        assert_eq!(f, ["S", "1", "2", "3"]);
    }
}
