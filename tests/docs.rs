//! The documentation keeps up with the command line: every flag of every subcommand's `--help`
//! appears in docs/cli.md.

use std::process::Command;

#[test]
fn every_cli_flag_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    // Every subcommand `exemplar --help` lists (so a new one cannot go undocumented).
    let top = Command::new(env!("CARGO_BIN_EXE_exemplar"))
        .arg("--help")
        .output()
        .unwrap();
    let top = String::from_utf8(top.stdout).unwrap();
    let cmds: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Command lines are indented by two spaces; wrapped descriptions by more.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(
        cmds.len() >= 8,
        "could not read the subcommands from --help:\n{top}"
    );
    for cmd in cmds {
        let out = Command::new(env!("CARGO_BIN_EXE_exemplar"))
            .args([cmd.as_str(), "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "exemplar {cmd} --help failed");
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
