use super::*;

fn thread(pid: u32, slots: [(u32, u64, u64); 2]) -> schedule_thread {
    let mut t = schedule_thread::default();
    t.hdr.pid = pid;
    t.task_start_ns = 1000 + u64::from(pid);
    for (i, (interval, count, sum_ns)) in slots.into_iter().enumerate() {
        t.slot[i] = schedule_slot {
            interval,
            count,
            sum_ns,
            min_ns: 1,
            max_ns: sum_ns,
            ..Default::default()
        };
    }
    t
}

#[test]
fn gather_takes_the_closed_interval_once_per_thread() {
    // interval 5 closed: slot 1 holds it, slot 0 holds interval 4 (or 6 begun)
    let live = [
        thread(1, [(4, 9, 90), (5, 2, 20)]),
        thread(2, [(6, 1, 10), (3, 7, 70)]),
    ];
    // thread 1 also died while the iterator ran: counted once; thread 2's
    // key is also a dead leader's whose pid and start an exec took over
    let exits = [
        thread(1, [(4, 9, 90), (5, 2, 20)]),
        thread(2, [(4, 1, 5), (5, 6, 60)]),
    ];
    let g = gather(5, &live, &exits);
    assert_eq!(g.len(), 3);
    assert_eq!((g[2].key.0, g[2].slot.count, g[2].exited), (2, 6, true));
    assert_eq!(
        (g[0].key.0, g[0].slot.count, g[0].slot.sum_ns, g[0].exited),
        (1, 2, 20, true)
    );
    // an older or newer interval in the slot is not this one's
    assert_eq!((g[1].key.0, g[1].slot.count), (2, 0));
}

#[test]
fn figures_stay_in_their_interval() {
    let dead = [thread(3, [(6, 4, 40), (5, 3, 30)])];
    let g = gather(6, &[], &dead);
    assert_eq!(
        (g[0].slot.count, g[0].slot.sum_ns, g[0].exited),
        (4, 40, true)
    );
    assert_eq!(gather(7, &[], &dead)[0].slot.count, 0);
}

#[test]
fn policies_and_metric_figures() {
    let names: Vec<&str> = (0..8).map(policy_name).collect();
    assert_eq!(
        names,
        ["normal", "fifo", "rr", "batch", "unknown", "idle", "deadline", "ext"]
    );
    let body = ScheduleThread {
        interval_ns: 1,
        count: 3,
        avg_ns: 2,
        max_ns: 4,
        min_ns: 1,
        sum_ns: 6,
        prio: 125,
        nice: 5,
        policy: "batch",
        exited: false,
    };
    let rec = Record::new(1, Event::ScheduleThread(body));
    let names: Vec<String> = rec.details().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[..3], ["interval_ns", "count", "avg_ns"]);
}

#[test]
fn iterator_output_is_split_into_threads() {
    let a = thread(1, [(1, 1, 1), (0, 0, 0)]);
    let mut bytes = vec![0u8]; // misaligned on purpose
                               // SAFETY: schedule_thread is plain data
    bytes.extend_from_slice(unsafe { plain::as_bytes(&a) });
    bytes.extend_from_slice(unsafe { plain::as_bytes(&a) });
    assert_eq!(parse_threads(&bytes[1..]).len(), 2);
    assert_eq!(parse_threads(&bytes[1..bytes.len() - 1]).len(), 1);
}
