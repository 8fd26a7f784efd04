//! The command line refuses bad input before it touches the machine. (This
//! test also makes `cargo test` build the binary that scripts/test.sh runs.)

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn jepsen_lite(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_jepsen-lite"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_nemesis_is_refused_with_the_names_it_knows() {
    let (code, stderr) = jepsen_lite(&["run", "--nemesis", "kill,meteor"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown nemesis \"meteor\""), "{stderr}");
    assert!(stderr.contains("partition-ring"), "{stderr}");
}

#[test]
fn a_campaign_with_a_bad_mix_is_refused() {
    let (code, stderr) = jepsen_lite(&["campaign", "--mixes", "kill;bogus"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown nemesis \"bogus\""), "{stderr}");
}

#[test]
fn cluster_sizes_other_than_three_to_five_are_refused() {
    let (code, stderr) = jepsen_lite(&["run", "--nodes", "7"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--nodes"), "{stderr}");
}
