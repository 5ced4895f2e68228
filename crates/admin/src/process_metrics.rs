//! The process's own resources on every scrape: memory, descriptors, CPU, threads, and the
//! allocator's view of the heap. The `process_*` names are the Prometheus client
//! conventions (what node and Go exporters publish), so existing dashboards work; the heap
//! figures are glibc's (`mallinfo2`) and tell a leak (in-use bytes grow) from fragmentation
//! (in-use flat, retained grows) where RSS alone cannot. The soak benchmark reads them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registered once with the node's registry (`Registry::register_collector`).
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of `/proc/self` and the allocator. Missing figures (no procfs, another libc)
/// are `None` and left out of the scrape rather than reported as 0.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessSample {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub threads: Option<u64>,
    pub heap: Option<HeapSample>,
}

/// The allocator's figures (glibc `mallinfo2`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeapSample {
    /// Bytes handed out to the program and not yet freed (small chunks + mmapped ones).
    pub in_use_bytes: u64,
    /// Bytes the allocator holds from the kernel (arenas + mmapped chunks), in use or free.
    pub retained_bytes: u64,
}

impl ProcessSample {
    pub fn read() -> ProcessSample {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|page| u64::try_from(page).ok())
            .unwrap_or(4096);
        let statm = std::fs::read_to_string("/proc/self/statm").ok();
        let (virtual_bytes, resident_bytes) = statm
            .as_deref()
            .and_then(parse_statm)
            .map(|(size, resident)| (Some(size * page), Some(resident * page)))
            .unwrap_or((None, None));
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let (cpu_ticks, threads) = stat
            .as_deref()
            .and_then(parse_stat)
            .map(|(ticks, threads)| (Some(ticks), Some(threads)))
            .unwrap_or((None, None));
        let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _hard)| soft);
        ProcessSample {
            resident_bytes,
            virtual_bytes,
            open_fds,
            max_fds,
            cpu_seconds: cpu_ticks.map(|ticks| ticks as f64 / ticks_per_second as f64),
            threads,
            heap: heap_sample(),
        }
    }
}

/// `/proc/self/statm`: total and resident size, in pages.
fn parse_statm(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_ascii_whitespace();
    let size = fields.next()?.parse().ok()?;
    let resident = fields.next()?.parse().ok()?;
    Some((size, resident))
}

/// `/proc/self/stat`: utime + stime (fields 14 and 15, clock ticks) and num_threads (20).
/// The command name (field 2) may hold spaces and parentheses, so fields are counted from
/// the last ')'.
fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let after_name = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0.
    let fields: Vec<&str> = after_name.split_ascii_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let threads = fields.get(17)?.parse().ok()?;
    Some((utime + stime, threads))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_sample() -> Option<HeapSample> {
    // SAFETY: mallinfo2 takes no arguments, only reads the allocator's statistics under its
    // own locks and returns a plain struct by value (glibc >= 2.33).
    let info = unsafe { libc::mallinfo2() };
    Some(HeapSample {
        in_use_bytes: (info.uordblks + info.hblkhd) as u64,
        retained_bytes: (info.arena + info.hblkhd) as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_sample() -> Option<HeapSample> {
    None
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = ProcessSample::read();
        let mut gauge = |name: &str, help: &str, value: Option<u64>| {
            let Some(value) = value else {
                return Ok(());
            };
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            sample.resident_bytes,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            sample.virtual_bytes,
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors",
            sample.open_fds,
        )?;
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors (soft limit)",
            sample.max_fds,
        )?;
        gauge("process_threads", "Number of OS threads", sample.threads)?;
        gauge(
            "palisade_heap_in_use_bytes",
            "Heap bytes allocated and not yet freed (allocator statistics); grows on a leak",
            sample.heap.map(|heap| heap.in_use_bytes),
        )?;
        gauge(
            "palisade_heap_retained_bytes",
            "Heap bytes the allocator holds from the kernel, in use or free; grows with fragmentation",
            sample.heap.map(|heap| heap.retained_bytes),
        )?;
        if let Some(seconds) = sample.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A name with spaces and a ')' must not shift the fields.
        let stat = "4242 (pal isade) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    25 17 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat(stat), Some((42, 9)));
        assert_eq!(parse_stat("4242 (palisade"), None);
        assert_eq!(parse_statm("1000 250 30 1 0 200 0\n"), Some((1000, 250)));
        assert_eq!(parse_statm(""), None);
    }

    #[test]
    fn this_process_reads_and_encodes() {
        let sample = ProcessSample::read();
        assert!(sample.resident_bytes.unwrap_or(0) > 0);
        assert!(sample.open_fds.unwrap_or(0) >= 3);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for name in [
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            "palisade_heap_in_use_bytes ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
