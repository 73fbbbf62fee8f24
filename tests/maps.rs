//! The collectors read and drain their BPF hash maps whole at every
//! interval: with thousands of entries, a batch comes back short whenever
//! the next bucket does not fit, and a reader that stops there leaves
//! entries behind (their figures then land in a later interval): libbpf-rs's
//! own batch iterators drained 1,023-2,047 of these 20,000 entries.

mod common;

use common::need_root;
use libbpf_rs::libbpf_sys::bpf_map_create_opts;
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use proc_image::collectors::{delete_keys, hash_entries, take_hash_entries, Entries};

const ENTRIES: u64 = 20_000;

fn filled_map() -> MapHandle {
    let opts = bpf_map_create_opts {
        sz: std::mem::size_of::<bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let map = MapHandle::create(
        MapType::Hash,
        Some("pi_test_maps"),
        8,
        16,
        ENTRIES as u32,
        &opts,
    )
    .expect("create a hash map");
    for i in 0..ENTRIES {
        map.update(&i.to_ne_bytes(), &[i as u8; 16], MapFlags::ANY)
            .expect("fill the map");
    }
    map
}

fn keys_of(entries: &Entries) -> Vec<u64> {
    let mut keys: Vec<u64> = entries
        .iter()
        .map(|(k, _)| u64::from_ne_bytes(k[..8].try_into().unwrap()))
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn thousands_of_entries_are_read_taken_and_deleted_whole() {
    need_root();
    let all: Vec<u64> = (0..ENTRIES).collect();
    let map = filled_map();

    let read = hash_entries(&map).unwrap();
    assert_eq!(keys_of(&read), all);
    assert_eq!(read.len() as u64, ENTRIES);
    for (k, v) in &read {
        assert_eq!(v, &[k[0]; 16]);
    }
    assert_eq!(map.keys().count() as u64, ENTRIES, "a read deletes nothing");

    let taken = take_hash_entries(&map).unwrap();
    assert_eq!(keys_of(&taken), all);
    for (k, v) in &taken {
        assert_eq!(v, &[k[0]; 16]);
    }
    assert_eq!(map.keys().count(), 0, "taken: the map is empty");

    // deleted in one batch: exactly those keys go
    let map = filled_map();
    let gone: Vec<Vec<u8>> = (0..ENTRIES - 100)
        .map(|i| i.to_ne_bytes().to_vec())
        .collect();
    delete_keys(&map, &gone);
    let left = keys_of(&hash_entries(&map).unwrap());
    assert_eq!(left, (ENTRIES - 100..ENTRIES).collect::<Vec<_>>());
    // a key already gone among them: the rest still go
    let again: Vec<Vec<u8>> = [ENTRIES - 200, ENTRIES - 50, ENTRIES - 1]
        .iter()
        .map(|i| i.to_ne_bytes().to_vec())
        .collect();
    delete_keys(&map, &again);
    assert_eq!(map.keys().count(), 98);
}
