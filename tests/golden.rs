//! Golden test of the decoders: ring-buffer records captured from a real run
//! (tests/golden/raw.bin, written by `PROC_IMAGE_CAPTURE_RAW=FILE proc_image
//! ...`) must decode to the same JSON lines and text lines as when they were
//! captured, field for field and in order. Refactors of how records are
//! built must not change what users' scripts read.
//!
//! After a deliberate change of the output or of the BPF record layout,
//! capture again and re-bless: `PROC_IMAGE_BLESS=1 cargo test --test golden`.
//! Kernel symbols are left out (an empty symbol table): they differ per boot.

use std::path::Path;
use std::sync::OnceLock;

use proc_image::bpf_intf::{decode, futex_wait_event, lock_event};
use proc_image::collectors::{futex, keytime, lock, read_captured};
use proc_image::kallsyms::Kallsyms;
use proc_image::output::format_text;
use proc_image::record::Record;

fn decoded() -> Vec<Record> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let raw = std::fs::read(dir.join("raw.bin")).expect("tests/golden/raw.bin");
    let ksyms = OnceLock::from(Kallsyms::parse(""));
    let mut records = Vec::new();
    for (collector, data) in read_captured(&raw) {
        let rec = match collector.as_str() {
            "keytime" => Some(keytime::decode_record(&data, &ksyms).unwrap()),
            "lock" => lock::lock_record(decode::<lock_event>(&data).unwrap()).unwrap(),
            "futex" => {
                Some(futex::wait_record(decode::<futex_wait_event>(&data).unwrap(), false).unwrap())
            }
            other => panic!("no decoder for captured {other} records"),
        };
        records.extend(rec);
    }
    records
}

fn check(name: &str, lines: Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let got = lines.join("\n") + "\n";
    if std::env::var_os("PROC_IMAGE_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).expect("golden file (PROC_IMAGE_BLESS=1 writes it)");
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "{name} line {}", i + 1);
    }
    assert_eq!(got.lines().count(), want.lines().count(), "{name}: lines");
}

#[test]
fn captured_records_decode_to_the_same_json() {
    let records = decoded();
    assert!(records.len() > 100, "{} records", records.len());
    let lines: Vec<String> = records
        .iter()
        .map(|r| {
            let mut line = Vec::new();
            r.write_json(&mut line);
            String::from_utf8(line).unwrap()
        })
        .collect();
    // the Value form says the same
    for (r, l) in records.iter().zip(&lines) {
        assert_eq!(&r.to_json().to_string(), l);
    }
    check("records.jsonl", lines);
}

#[test]
fn captured_records_show_as_the_same_text() {
    let lines = decoded()
        .iter()
        .map(|r| format_text(r, "12:00:00.000").trim_end().to_string())
        .collect();
    check("records.txt", lines);
}
