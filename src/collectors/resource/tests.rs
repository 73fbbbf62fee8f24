use super::*;

fn sample(pid: u32, kind: u32, ts: u64, cpu: u64, rchar: u64, wchar: u64) -> resource_sample {
    let mut s = resource_sample::default();
    s.hdr.pid = pid;
    s.hdr.tgid = 100;
    s.hdr.kind = kind as u8;
    s.hdr.ts_ns = ts;
    s.hdr.comm[..2].copy_from_slice(b"wl");
    s.on_cpu_ns = cpu;
    s.rss_pages = 256;
    s.rchar = rchar;
    s.wchar = wchar;
    s
}

#[test]
fn percent_and_rates() {
    assert_eq!(percent(250_000_000, 1_000_000_000), 25.0);
    assert_eq!(percent(1, 3), 33.33);
    assert_eq!(percent(5, 0), 0.0);
    assert_eq!(per_second(50 << 20, 500_000_000), 100 << 20);
    assert_eq!(per_second(1, 0), 0);
    // no overflow with large counts over short intervals
    assert_eq!(per_second(u64::MAX / 2, 1_000_000_000), u64::MAX / 2);
}

#[test]
fn counters_never_go_back() {
    let a = Counters {
        on_cpu_ns: 10,
        rchar: 5,
        wchar: 7,
    };
    let b = Counters {
        on_cpu_ns: 30,
        rchar: 4,
        wchar: 9,
    };
    assert_eq!(
        b.since(&a),
        Counters {
            on_cpu_ns: 20,
            rchar: 0,
            wchar: 2
        }
    );
}

#[test]
fn cpu_idle_from_proc_stat() {
    let stat = "cpu  10 0 20 5000 7 0 1 0 0 0\ncpu0 5 0 10 2000 3 0 0 0 0 0\ncpu1 5 0 10 3000 4 0 1 0 0 0\nintr 1\n";
    assert_eq!(parse_cpu_idle_ns(stat, 1, 10_000_000), Some(30_000_000_000));
    assert_eq!(parse_cpu_idle_ns(stat, 0, 10_000_000), Some(20_000_000_000));
    assert_eq!(parse_cpu_idle_ns(stat, 2, 10_000_000), None);
}

#[test]
fn meminfo_total() {
    let text = "MemTotal:        8029876 kB\nMemFree:          123 kB\n";
    assert_eq!(parse_mem_total_kib(text), Some(8_029_876));
    assert_eq!(parse_mem_total_kib("nothing"), None);
}

#[test]
fn iterator_output_is_split_into_samples() {
    let a = sample(1, crate::bpf_intf::RESOURCE_LIVE, 5, 1, 2, 3);
    let b = sample(2, RESOURCE_EXIT, 6, 4, 5, 6);
    let mut bytes = vec![0u8]; // misaligned on purpose
                               // SAFETY: resource_sample is plain data
    bytes.extend_from_slice(unsafe { plain::as_bytes(&a) });
    bytes.extend_from_slice(unsafe { plain::as_bytes(&b) });
    let got = parse_samples(&bytes[1..]);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].hdr.pid, got[0].wchar), (1, 3));
    assert_eq!((got[1].hdr.pid, got[1].on_cpu_ns), (2, 4));
    // a torn tail is not a sample
    assert_eq!(parse_samples(&bytes[1..bytes.len() - 1]).len(), 1);
}

#[test]
fn total_counts_shared_memory_once_per_process() {
    let t = |pid, tgid, rss_kib, cpu| Figures {
        pid,
        tgid,
        comm: String::new(),
        ts_ns: 7,
        window_ns: 1000,
        delta: Counters {
            on_cpu_ns: cpu,
            rchar: 1,
            wchar: 2,
        },
        total: Counters::default(),
        rss_kib,
        exited: false,
        cgroup_id: 0,
        cpu: None,
    };
    let threads = [t(1, 1, 100, 5), t(2, 1, 100, 7), t(3, 3, 40, 1)];
    let sum = total_of(&threads, 0, 0, Counters::default(), 9, 5);
    assert_eq!((sum.ts_ns, sum.window_ns), (7, 1000));
    let none = total_of(&[], 0, 0, Counters::default(), 9, 5);
    assert_eq!((none.ts_ns, none.window_ns), (9, 5));
    assert_eq!(sum.rss_kib, 140);
    assert_eq!(
        sum.delta,
        Counters {
            on_cpu_ns: 13,
            rchar: 3,
            wchar: 6
        }
    );
    let rec = sum.total_record(1400, 2);
    assert_eq!(rec.get("cpu_pct"), Some(serde_json::json!(1.3)));
    assert_eq!(rec.get("mem_pct"), Some(serde_json::json!(10.0)));
    assert_eq!(rec.get("read_bps"), Some(serde_json::json!(3_000_000)));
}

#[test]
fn tracker_takes_differences_per_thread() {
    use crate::bpf_intf::RESOURCE_LIVE as LIVE;
    let mut t = Tracker::default();
    // at the activation: thread 1 had read 1000 bytes already
    t.start(&[sample(1, LIVE, 100, 0, 1000, 0)]);
    let f = t.figures(
        &[
            sample(1, LIVE, 1100, 400, 1500, 20),
            // born during the interval, which began at 100
            sample(2, LIVE, 1150, 300, 10, 10),
        ],
        4,
        100,
    );
    let one = f.iter().find(|f| f.pid == 1).unwrap();
    assert_eq!(one.window_ns, 1000);
    assert_eq!(
        (one.delta.on_cpu_ns, one.delta.rchar, one.delta.wchar),
        (400, 500, 20)
    );
    assert_eq!(one.rss_kib, 1024);
    let two = f.iter().find(|f| f.pid == 2).unwrap();
    assert_eq!((two.window_ns, two.delta.rchar), (1050, 10));
    assert_eq!(t.total.on_cpu_ns, 700);

    // thread 1 exits: its exit sample wins over a live one; thread 2 is
    // not sampled any more (no longer a target) and is forgotten
    let f = t.figures(
        &[
            sample(1, RESOURCE_EXIT, 1900, 500, 1600, 20),
            sample(1, LIVE, 1800, 450, 1550, 20),
        ],
        4,
        1100,
    );
    assert_eq!(f.len(), 1);
    assert!(f[0].exited);
    assert_eq!((f[0].window_ns, f[0].delta.on_cpu_ns), (800, 100));
    assert_eq!(
        f[0].total,
        Counters {
            on_cpu_ns: 500,
            rchar: 600,
            wchar: 20
        }
    );
    assert_eq!(t.total.on_cpu_ns, 800);
    // an exited thread is gone: the same pid later is a new thread
    let f = t.figures(&[sample(1, LIVE, 2900, 50, 5, 0)], 4, 1900);
    assert_eq!((f[0].delta.on_cpu_ns, f[0].window_ns), (50, 1000));
}
