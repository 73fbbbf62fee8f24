use super::*;

fn controller(args: &[&str]) -> Result<ControllerArgs, String> {
    let mut argv = vec!["controller"];
    argv.extend_from_slice(args);
    let args = ControllerArgs::try_parse_from(argv)
        .map_err(|e| one_line_error(&e.render().to_string()))?;
    args.validate()?;
    Ok(args)
}

#[test]
fn optional_values() {
    let a = controller(&["-a", "-p", "5", "-k", "-s"]).unwrap();
    let values = |a: &ControllerArgs| {
        (
            a.value_of(CollectorKind::Keytime),
            a.value_of(CollectorKind::Syscall),
        )
    };
    assert_eq!((a.pid, values(&a)), (Some(5), (Some(1), Some(10))));
    let a = controller(&["-a", "-k", "0", "-s", "50"]).unwrap();
    assert_eq!(values(&a), (Some(0), Some(50)));
    assert_eq!(
        a.collectors(),
        [CollectorKind::Keytime, CollectorKind::Syscall]
    );
    let a = controller(&["-a", "-p", "0", "-c", "1", "-t", "3"]).unwrap();
    assert_eq!((a.pid, a.cpu, a.time), (Some(0), Some(1), Some(3)));
}

#[test]
fn futex_flags() {
    let a = controller(&["-a", "-M", "--futex-min-us", "500"]).unwrap();
    assert_eq!(
        (a.collectors(), a.futex_min_us),
        (vec![CollectorKind::Futex], Some(500))
    );
    let a = controller(&["-a", "-P", "1", "--mfutex"]).unwrap();
    assert_eq!(
        (a.collectors(), a.futex_min_us),
        (vec![CollectorKind::Futex], None)
    );
    // -m stays controller's --myproc
    let a = controller(&["-a", "-m", "-M"]).unwrap();
    assert!(a.myproc && a.collectors() == [CollectorKind::Futex]);
    assert!(controller(&["-d", "--futex-min-us", "5"])
        .unwrap_err()
        .contains("only with -a"));
    assert!(controller(&["-a", "-M", "--futex-min-us", "-1"]).is_err());
    assert!(controller(&["-a", "-k", "--futex-min-us", "5"])
        .unwrap_err()
        .contains("goes with -M"));
    assert!(controller(&["-a", "--futex-min-us", "5"]).is_ok());
}

#[test]
fn bad_input_is_one_line() {
    for (args, needle) in [
        (&["-a", "-p", "1", "-P", "1"][..], "cannot be used with"),
        (&["-a", "-p", "-1"], "negative"),
        (&["-a", "-p", "abc"], "not a number"),
        (&["-a", "-p", "99999999999"], "out of range"),
        (&["-a", "-t", "-5"], "negative"),
        (&["-a", "-s", "0"], "0 is not in 1..=50"),
        (&["-a", "-s", "51"], "51 is not in 1..=50"),
        (&["-a", "-s", "abc"], "invalid value"),
        (&["-a", "-k", "3"], "3 is not in 0..=2"),
        (&["-a", "-k", "1", "--stack-min-us", "5"], "goes with -k 2"),
        (&["-d", "--stack-min-us", "5"], "only with -a"),
        (
            &["-a", "-k", "0", "--stretch-min-us", "5"],
            "goes with -k 1 or -k 2",
        ),
        (
            &["-a", "-s", "--stretch-min-us", "5"],
            "goes with -k 1 or -k 2",
        ),
        (&["-d", "--stretch-min-us", "5"], "only with -a"),
        (&["-a", "-s", "--exec-failures"], "goes with -k"),
        (&["-d", "--exec-failures"], "only with -a"),
        (
            &["-a", "--stretch-min-us", "60000001"],
            "not in 0..=60000000",
        ),
        (&["-a", "-d"], "cannot be used with"),
        (&["-d", "-p", "4"], "only with -a"),
        (&["-f", "-k"], "only with -a or -d"),
        (&["-d", "-m"], "only with -a"),
        (&["-a", "-c", "1"], "--pid"),
        (&[], "required"),
        (&["-a", "--bogus"], "unexpected argument"),
    ] {
        let err = controller(args).unwrap_err();
        assert!(
            err.starts_with("error: ") && !err.contains('\n'),
            "{args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn stretch_min_us_goes_with_keytime_levels_1_and_2() {
    for args in [
        &["-a", "--stretch-min-us", "0"][..],
        &["-a", "-k", "--stretch-min-us", "100"],
        &["-a", "-k", "2", "-s", "--stretch-min-us", "1"],
    ] {
        let a = controller(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(a.stretch_min_us.is_some(), "{args:?}");
    }
}

#[test]
fn exec_failures_go_with_keytime() {
    for args in [
        &["-a", "--exec-failures"][..],
        &["-a", "-k", "0", "--exec-failures"],
        &["-a", "-k", "-s", "--exec-failures"],
    ] {
        let a = controller(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(a.exec_failures, "{args:?}");
    }
}

#[test]
fn proc_image_collectors() {
    let p = ProcImageArgs::try_parse_from(["proc_image"]).unwrap();
    assert_eq!(p.collectors(), CollectorKind::ALL);
    let p = ProcImageArgs::try_parse_from(["proc_image", "-k", "--json", "-t", "5"]).unwrap();
    assert_eq!(
        (p.collectors(), p.format(), p.time),
        (vec![CollectorKind::Keytime], Format::Json, 5)
    );
    let p = ProcImageArgs::try_parse_from(["proc_image", "-l"]).unwrap();
    assert_eq!(p.collectors(), [CollectorKind::Lock]);
    for flag in ["-M", "-m", "--mfutex"] {
        let p = ProcImageArgs::try_parse_from(["proc_image", flag]).unwrap();
        assert_eq!(p.collectors(), [CollectorKind::Futex], "{flag}");
    }
    let p = ProcImageArgs::try_parse_from([
        "proc_image",
        "-o",
        "none",
        "--metrics",
        "9464",
        "--metrics-top",
        "5",
        "--trace-out",
        "/tmp/t.json",
    ])
    .unwrap();
    assert_eq!(
        (p.format(), p.metrics.as_deref(), p.metrics_top),
        (Format::None, Some("9464"), 5)
    );
    assert_eq!(p.trace_out, Some(PathBuf::from("/tmp/t.json")));
    assert!(ProcImageArgs::try_parse_from(["proc_image", "--metrics-top", "0"]).is_err());
    assert!(ProcImageArgs::try_parse_from(["proc_image", "--ringbuf-kib", "3"]).is_err());
    assert!(ProcImageArgs::try_parse_from(["proc_image", "-t", "-1"]).is_err());
}
