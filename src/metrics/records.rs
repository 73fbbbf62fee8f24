//! Records to metric updates: what each collector's records add to which family.

use serde_json::Value;

use super::{Exporter, Fam, Labels, OTHER, REBALANCE_NS};
use crate::output::Record;

fn u64_of(rec: &Record, name: &str) -> u64 {
    match rec.get(name) {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .unwrap_or(0),
        _ => 0,
    }
}

fn f64_of(rec: &Record, name: &str) -> f64 {
    rec.get(name).and_then(Value::as_f64).unwrap_or(0.0)
}

fn str_of<'a>(rec: &'a Record, name: &str) -> &'a str {
    rec.get(name).and_then(Value::as_str).unwrap_or("")
}

impl Exporter {
    /// Turn one record into metric updates.
    pub fn apply(&mut self, rec: &Record, now: u64) {
        if now >= self.next_rebalance_ns {
            if self.next_rebalance_ns != 0 {
                self.maintain(now);
            }
            self.next_rebalance_ns = now + REBALANCE_NS;
        }
        let collector = rec.collector;
        let (pid, tgid, comm) = (rec.pid, rec.tgid, rec.comm.as_str());
        self.current = self
            .targets
            .get(collector)
            .cloned()
            .unwrap_or_else(|| "none".into());
        self.current_cgroup = str_of(rec, "cgroup").to_string();
        let target = self.target();
        let mut updates: Vec<(Fam, Labels, Update)> = Vec::new();
        let mut put = |fam, labels, u| updates.push((fam, labels, u));
        if collector != "proc_image" {
            put(
                Fam::Records,
                vec![("collector", collector.into())],
                Update::Add(1.0),
            );
        }
        match (collector, rec.event) {
            ("keytime", ev @ ("fork" | "vfork" | "pthread_create" | "execve" | "exit")) => {
                let l = self.thread_labels(pid, tgid, comm, 1_000_000);
                put(
                    Fam::LifecycleEvents,
                    Self::with_label(l, "event", ev),
                    Update::Add(1.0),
                );
            }
            ("keytime", "on_cpu") => {
                let ns = u64_of(rec, "duration_ns");
                let l = self.thread_labels(pid, tgid, comm, ns);
                put(Fam::OnCpu, l, Update::Add(ns as f64 / 1e9));
            }
            ("keytime", "off_cpu") => {
                let ns = u64_of(rec, "duration_ns");
                let l = self.thread_labels(pid, tgid, comm, 0);
                let reason = str_of(rec, "reason");
                put(
                    Fam::OffCpu,
                    Self::with_label(l, "reason", reason),
                    Update::Add(ns as f64 / 1e9),
                );
            }
            ("keytime", "cpu_summary") => {
                let on = u64_of(rec, "on_cpu_ns");
                let l = self.thread_labels(pid, tgid, comm, on);
                put(Fam::OnCpu, l.clone(), Update::Add(on as f64 / 1e9));
                if let Some(Value::Object(reasons)) = rec.get("off_cpu_by_reason_ns") {
                    for (reason, ns) in reasons {
                        let s = ns.as_u64().unwrap_or(0) as f64 / 1e9;
                        put(
                            Fam::OffCpu,
                            Self::with_label(l.clone(), "reason", reason),
                            Update::Add(s),
                        );
                    }
                }
            }
            ("keytime", "cpu_summary_rest") => {
                put(
                    Fam::OnCpu,
                    self.other_labels(),
                    Update::Add(u64_of(rec, "on_cpu_ns") as f64 / 1e9),
                );
            }
            ("syscall", "syscalls") => {
                let n = u64_of(rec, "count");
                let l = self.thread_labels(pid, tgid, comm, n * 1000);
                put(Fam::ThreadSyscalls, l, Update::Add(n as f64));
            }
            ("syscall", "syscalls_rest") => {
                put(
                    Fam::ThreadSyscalls,
                    self.other_labels(),
                    Update::Add(u64_of(rec, "count") as f64),
                );
            }
            ("syscall", "syscalls_total") => {
                if let Some(Value::Object(by_name)) = rec.get("by_name") {
                    for (name, n) in by_name {
                        let l = vec![("target", target.clone()), ("syscall", name.clone())];
                        put(Fam::Syscalls, l, Update::Add(n.as_f64().unwrap_or(0.0)));
                    }
                }
                Self::latency(rec, Fam::SyscallLatency, &target, &mut put);
            }
            ("schedule", "schedule") => Self::latency(rec, Fam::SchedLatency, &target, &mut put),
            ("resource", "resource") => {
                let cpu = f64_of(rec, "cpu_pct") / 100.0;
                let activity = (cpu * u64_of(rec, "interval_ns") as f64) as u64;
                let l = self.thread_labels(pid, tgid, comm, activity);
                if l[2].1 != OTHER {
                    put(Fam::ThreadCpuUsage, l, Update::Set(cpu));
                }
            }
            ("resource", "resource_total") => {
                let cpu = f64_of(rec, "cpu_pct") / 100.0;
                let activity = (cpu * u64_of(rec, "interval_ns") as f64) as u64;
                let totals = [
                    u64_of(rec, "cpu_ns_total"),
                    u64_of(rec, "read_bytes_total"),
                    u64_of(rec, "write_bytes_total"),
                ];
                let last = self
                    .last_totals
                    .insert(tgid, (totals, now))
                    .map_or([0; 3], |(t, _)| t);
                // a total that went down started again (a new activation)
                let delta: Vec<f64> = totals
                    .iter()
                    .zip(last)
                    .map(|(&t, l)| t.checked_sub(l).unwrap_or(t) as f64)
                    .collect();
                let l = self.proc_labels(tgid, comm, activity).unwrap_or_else(|| {
                    vec![
                        ("target", target.clone()),
                        ("tgid", OTHER.into()),
                        ("comm", OTHER.into()),
                    ]
                });
                put(Fam::CpuSeconds, l.clone(), Update::Add(delta[0] / 1e9));
                put(Fam::IoRead, l.clone(), Update::Add(delta[1]));
                put(Fam::IoWrite, l.clone(), Update::Add(delta[2]));
                if l[1].1 != OTHER {
                    put(Fam::CpuUsage, l.clone(), Update::Set(cpu));
                    put(
                        Fam::MemoryRss,
                        l.clone(),
                        Update::Set(u64_of(rec, "rss_kib") as f64 * 1024.0),
                    );
                    put(
                        Fam::MemoryUsage,
                        l,
                        Update::Set(f64_of(rec, "mem_pct") / 100.0),
                    );
                }
            }
            ("lock", "lock") => {
                let l = vec![
                    ("target", target.clone()),
                    ("lock_type", str_of(rec, "lock_type").to_string()),
                ];
                put(
                    Fam::LockWait,
                    l.clone(),
                    Update::Observe(u64_of(rec, "wait_ns")),
                );
                put(Fam::LockHold, l, Update::Observe(u64_of(rec, "hold_ns")));
            }
            ("lock", "lock_failed") => {
                let l = vec![
                    ("target", target.clone()),
                    ("lock_type", str_of(rec, "lock_type").to_string()),
                ];
                put(Fam::LockFailures, l, Update::Add(1.0));
            }
            ("proc_image", "lost") => {
                let c = str_of(rec, "lost_collector").to_string();
                put(
                    Fam::RingbufDrops,
                    vec![("collector", c.clone())],
                    Update::Add(u64_of(rec, "ringbuf_drops") as f64),
                );
                for reason in ["map_full", "no_task_state"] {
                    let l = vec![("collector", c.clone()), ("reason", reason.into())];
                    put(Fam::LostEvents, l, Update::Add(u64_of(rec, reason) as f64));
                }
            }
            _ => {}
        }
        self.with(|s| {
            for (fam, labels, u) in updates {
                match u {
                    Update::Add(v) => s.add(fam, labels, now, v),
                    Update::Set(v) => s.set(fam, labels, now, v),
                    Update::Observe(ns) => s.hist(fam, labels, now).observe_ns(ns),
                    Update::Hist(h, sum_ns) => s.hist(fam, labels, now).add_json(&h, sum_ns),
                }
            }
        });
    }

    /// A latency record (syscalls_total, schedule): target and system histograms.
    fn latency(rec: &Record, fam: Fam, target: &str, put: &mut impl FnMut(Fam, Labels, Update)) {
        for (scope, prefix) in [("target", ""), ("system", "sys_")] {
            let Some(hist) = rec.get(&format!("{prefix}hist")) else {
                continue;
            };
            let count = u64_of(rec, &format!("{prefix}count"));
            let sum = match rec.get(&format!("{prefix}sum_ns")) {
                Some(v) => v.as_u64().unwrap_or(0),
                None => u64_of(rec, &format!("{prefix}avg_ns")) * count,
            };
            let l = vec![("target", target.to_string()), ("scope", scope.into())];
            put(fam, l, Update::Hist(hist.clone(), sum));
        }
    }
}

enum Update {
    Add(f64),
    Set(f64),
    Observe(u64),
    Hist(Value, u64),
}
