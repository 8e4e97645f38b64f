//! `mib-export`: a dictionary as an MIB causal-variable featurizer, checked in Python with torch
//! and numpy (scripts/mib_checks.py): the verifier's layout, the state, inverse(forward(x)) = x,
//! the hard and soft features, an interchange of one region's feature against the same edit by
//! hand; and the bad inputs.

mod common;

use common::{assert_no_outputs, clustered, exemplar, python, write_npy, write_sidecar};
use std::path::Path;

fn dictionary(dir: &Path) {
    let d = 24;
    let x = clustered(1200, d, 10, 0.3, 3);
    write_npy(&dir.join("a.npy"), &x, d);
    write_sidecar(&dir.join("a.npy"), 1200, 30, 0);
    exemplar(
        dir,
        &[
            "build",
            "-a",
            "a.npy",
            "-p",
            "5",
            "--batch-size",
            "300",
            "--calibration-activations",
            "600",
            "--no-saturation",
            "--reservoir",
            "8",
            "--device",
            "cpu",
            "-o",
            "d.safetensors",
        ],
    )
    .ok();
}

#[test]
fn hard_and_soft_featurizers_invert_and_interchange_like_numpy() {
    let Some(py) = python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dictionary(dir);
    let unit = "ResidualStream(Layer:3,Token:last)";
    for (top_n, indices) in [("1", None), ("3", Some("0,2"))] {
        let spec = format!("{unit}=d.safetensors");
        let mut args = vec![
            "mib-export",
            "--unit",
            &spec,
            "--top-n",
            top_n,
            "-o",
            "sub",
            "--force",
        ];
        if let Some(i) = indices {
            args.extend(["--indices", i]);
        }
        exemplar(dir, &args).ok();
        let idx = std::fs::read_to_string(dir.join("sub").join(format!("{unit}_indices"))).unwrap();
        assert_eq!(idx, indices.map_or("null".to_string(), |_| "[0, 2]".into()));
        let out = common::run_python_check(
            &py,
            "mib_checks.py",
            dir,
            &["featurizer", "sub", unit, "d.safetensors", top_n],
        );
        assert!(out.contains("ok featurizer"), "{out}");
    }
}

#[test]
fn bad_exports_are_refused_with_errors_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    dictionary(dir);
    // An existing directory without --force; nothing is written into it.
    std::fs::create_dir(dir.join("old")).unwrap();
    let e = exemplar(
        dir,
        &["mib-export", "--unit", "u=d.safetensors", "-o", "old"],
    )
    .err();
    assert!(
        e.contains("old already exists") && e.contains("--force"),
        "{e}"
    );
    assert_no_outputs(dir, &["old/featurizer.py", "old/u_featurizer"]);
    // More features per row than regions, an index out of range, a bad unit, a repeat.
    let k = {
        let out = exemplar(dir, &["inspect", "d.safetensors", "--json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["partitions"].as_u64().unwrap() as usize
    };
    let big = (k + 1).to_string();
    for (args, want) in [
        (
            vec!["--unit", "u=d.safetensors", "--top-n", big.as_str()],
            format!("{big} features per row: d.safetensors has {k} regions"),
        ),
        (
            vec!["--unit", "u=d.safetensors", "--indices", big.as_str()],
            format!("feature {big} of unit u: d.safetensors has {k} regions"),
        ),
        (
            vec!["--unit", "d.safetensors"],
            "--unit d.safetensors: give NAME=DICT".to_string(),
        ),
        (
            vec!["--unit", "a/b=d.safetensors"],
            "\"a/b\" is not usable as a file prefix".to_string(),
        ),
        (
            vec!["--unit", "u=d.safetensors", "--unit", "u=d.safetensors"],
            "u is named twice".to_string(),
        ),
    ] {
        let mut a = vec!["mib-export"];
        a.extend(args);
        a.extend(["-o", "new"]);
        let e = exemplar(dir, &a).err();
        assert!(e.contains(&want), "{e}\nwanted: {want}");
        assert_no_outputs(dir, &["new"]);
    }
}
