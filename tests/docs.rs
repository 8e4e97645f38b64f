//! The documentation keeps up with the command line: every flag of every subcommand's `--help`
//! appears in docs/cli.md.

use std::process::Command;

#[test]
fn every_cli_flag_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    let mut cmds = vec![
        "calibrate",
        "build",
        "assign",
        "encode",
        "inspect",
        "eval",
        "demo",
    ];
    if cfg!(feature = "torch") {
        cmds.push("activations");
        cmds.push("bench");
    }
    for cmd in cmds {
        let out = Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            doc.contains(&format!("`exemplar {cmd}`")),
            "docs/cli.md has no section for {cmd}"
        );
        for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = flag.trim_end_matches([',', '.', ')', ':']);
            let flag = flag.split(['=', '<', '[']).next().unwrap();
            if flag == "--help" || flag == "--version" || flag.len() < 3 {
                continue;
            }
            assert!(
                doc.contains(flag),
                "docs/cli.md does not mention {flag} (of `exemplar {cmd}`)"
            );
        }
    }
}
