use super::*;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn events(buf: &Buf) -> Vec<Value> {
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

use crate::collectors::{keytime, lock, resource, syscall};

fn kt(ts: u64, event: keytime::Event) -> Record {
    Record::new(ts, event).task(11, 10, "work")
}

fn on(duration_ns: u64) -> keytime::Event {
    keytime::Event::OnCpu(keytime::OnCpu {
        cpu: 0,
        duration_ns,
        ..Default::default()
    })
}

#[test]
fn slices_instants_and_names() {
    let buf = Buf::default();
    let mut w = TraceWriter::new(Path::new("t"), Box::new(buf.clone()));
    w.add(&kt(5_000, on(4_000)));
    // overlaps the previous slice by 1 us: clipped to start at its end
    let off = keytime::OffCpu {
        duration_ns: 5_000,
        reason: "sleep",
        ..Default::default()
    };
    w.add(&kt(9_000, keytime::Event::OffCpu(off)));
    // entirely inside what was already drawn: dropped
    w.add(&kt(8_000, on(1_000)));
    let child = keytime::Child {
        child_pid: 12,
        child_tgid: 12,
        clone_flags: 0,
    };
    w.add(&kt(6_000, keytime::Event::Fork(child)));
    w.add(&kt(9_500, keytime::Event::Exit(Default::default())));
    let exec = keytime::Event::Execve(Default::default());
    w.add(&Record::new(9_600, exec).task(11, 10, "newname"));
    w.close().unwrap();
    w.close().unwrap();
    let ev = events(&buf);
    let x: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(x.len(), 2);
    assert_eq!(
        (x[0]["ts"].as_f64(), x[0]["dur"].as_f64()),
        (Some(1.0), Some(4.0))
    );
    assert_eq!(x[1]["name"], "off-CPU: sleep");
    assert_eq!(
        (x[1]["ts"].as_f64(), x[1]["dur"].as_f64()),
        (Some(5.0), Some(4.0))
    );
    let inst: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "i").collect();
    assert_eq!(inst[0]["name"], "fork");
    assert_eq!(inst[0]["args"]["child_pid"], 12);
    assert_eq!(
        (inst[0]["pid"].as_u64(), inst[0]["tid"].as_u64()),
        (Some(10), Some(11))
    );
    let names: Vec<(&Value, &Value)> = ev
        .iter()
        .filter(|e| e["ph"] == "M")
        .map(|e| (&e["name"], &e["args"]["name"]))
        .collect();
    assert!(names.contains(&(&"thread_name".into(), &"work".into())));
    // a new comm after execve renames the thread
    assert!(names.contains(&(&"thread_name".into(), &"newname".into())));
}

#[test]
fn sequence_syscalls_are_async_slices_written_once() {
    let buf = Buf::default();
    let rec = |ts: u64, names: &[&str], spans: &[[u64; 2]]| {
        let t = syscall::Thread {
            interval_ns: 1_000_000,
            count: 3,
            sequence: names.iter().map(|n| n.to_string()).collect(),
            sequence_spans: spans.to_vec(),
            ..Default::default()
        };
        Record::new(ts, syscall::Event::Syscalls(t)).task(11, 10, "work")
    };
    {
        let mut w = TraceWriter::new(Path::new("t"), Box::new(buf.clone()));
        w.add(&rec(
            100_000,
            &["read", "write"],
            &[[10_000, 5_000], [20_000, 1_000]],
        ));
        // the next interval's sequence repeats `write`; `exit` never returned
        w.add(&rec(
            200_000,
            &["write", "getpid", "exit"],
            &[[20_000, 1_000], [30_000, 2_000], [40_000, 0]],
        ));
    }
    let slices: Vec<(String, String, f64)> = events(&buf)
        .iter()
        .filter(|e| e["cat"] == "syscall")
        .map(|e| {
            (
                e["ph"].to_string(),
                e["name"].to_string(),
                e["ts"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, f64)> = [
        ("b", "read", 10.0),
        ("e", "read", 15.0),
        ("b", "write", 20.0),
        ("e", "write", 21.0),
        ("b", "getpid", 30.0),
        ("e", "getpid", 32.0),
    ]
    .iter()
    .map(|(p, n, t)| (format!("{p:?}"), format!("{n:?}"), *t))
    .collect();
    assert_eq!(slices, want);
}

#[test]
fn locks_are_async_slices_and_resources_counters() {
    let buf = Buf::default();
    {
        let mut w = TraceWriter::new(Path::new("t"), Box::new(buf.clone()));
        let held = lock::Interval {
            lock_type: "mutex",
            lock_addr: 0x10,
            request_ns: 10_000,
            acquire_ns: 20_000,
            release_ns: 45_000,
            ..Default::default()
        };
        w.add(&Record::new(50_000, lock::Event::Lock(held)).task(11, 10, "work"));
        let usage = resource::Usage {
            cpu_pct: 12.5,
            rss_kib: 100,
            read_bps: 1,
            write_bps: 2,
            ..Default::default()
        };
        let total = resource::Event::ResourceTotal(resource::Total { usage, threads: 1 });
        w.add(&Record::new(60_000, total).task(10, 10, "work"));
        // dropped without close: Drop closes the array
    }
    let ev = events(&buf);
    let lock: Vec<(&str, &str, f64)> = ev
        .iter()
        .filter(|e| e["cat"] == "lock")
        .map(|e| {
            (
                e["ph"].as_str().unwrap(),
                e["name"].as_str().unwrap(),
                e["ts"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        lock,
        [
            ("b", "mutex wait", 10.0),
            ("e", "mutex wait", 20.0),
            ("b", "mutex hold", 20.0),
            ("e", "mutex hold", 45.0)
        ]
    );
    let c: Vec<&Value> = ev.iter().filter(|e| e["ph"] == "C").collect();
    assert_eq!(c[0]["name"], "CPU %");
    assert_eq!(c[0]["args"]["cpu"], 12.5);
    assert_eq!(c[2]["args"]["write"], 2.0);
}
