//! Rebuilds the crate when a migration is added or changed, so `sqlx::migrate!` embeds it, and
//! stamps the build with its git commit and date for `botvisor --version`
//! (`BOTVISOR_GIT_COMMIT`, `BOTVISOR_BUILD_DATE`; "unknown" when git or the clock is absent).

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=BOTVISOR_GIT_COMMIT");
    let commit = std::env::var("BOTVISOR_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BOTVISOR_GIT_COMMIT={commit}");
    // A new commit moves HEAD (or the branch it points to): stamp again.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or(dir);
            println!("cargo:rerun-if-changed={common}/{reference}");
        }
    }
    let date = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| civil_date(d.as_secs() / 86_400))
        .unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=BOTVISOR_BUILD_DATE={date}");
}

/// Runs git and returns its trimmed output, or `None` when git is absent or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
