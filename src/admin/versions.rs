//! Versions of texts and manifests: history, diff and rollback.
//!
//! The versions are written by triggers (migrations/panel/0004), so a change from any writer —
//! the panel, the CLI, plain SQL — is kept with who made it and when. A rollback writes the
//! old value back through the normal, validated path, so it is itself a new version (and can
//! be rolled back in turn).

use serde::Serialize;

use super::{Admin, AdminError};
use crate::panel::access::{ManifestVersion, TextVersion};
use crate::panel::store;

impl Admin {
    /// Every version of a text (newest first); `lang` defaults to the manifest's language.
    pub async fn text_history(
        &self,
        id: i64,
        key: &str,
        lang: Option<&str>,
    ) -> Result<Vec<TextVersion>, AdminError> {
        let lang = self.default_lang(id, lang).await?;
        Ok(store::text_history(&self.pool, id, key, &lang).await?)
    }

    /// The latest `limit` text changes of a bot (newest first).
    pub async fn recent_text_versions(
        &self,
        id: i64,
        limit: i64,
    ) -> Result<Vec<TextVersion>, AdminError> {
        Ok(store::recent_text_versions(&self.pool, id, limit.clamp(1, 1000)).await?)
    }

    /// Every version of a bot's manifest (newest first).
    pub async fn manifest_history(&self, id: i64) -> Result<Vec<ManifestVersion>, AdminError> {
        Ok(store::manifest_history(&self.pool, id).await?)
    }

    /// Puts a text back as version `version` left it (deleting it if that version deleted
    /// it); returns the language.
    pub async fn rollback_text(
        &self,
        id: i64,
        key: &str,
        lang: Option<&str>,
        version: i64,
    ) -> Result<String, AdminError> {
        let lang = self.default_lang(id, lang).await?;
        let versions = store::text_history(&self.pool, id, key, &lang).await?;
        let Some(v) = versions.iter().find(|v| v.version == version) else {
            return Err(AdminError::NoSuchVersion(format!(
                "bot {id} has no version {version} of text {key} [{lang}]"
            )));
        };
        match &v.value {
            Some(value) => self.set_text(id, key, Some(&lang), value).await,
            None => self.delete_text(id, key, Some(&lang)).await,
        }
    }

    /// Puts a bot's manifest back as version `version` wrote it (validated like any manifest).
    pub async fn rollback_manifest(
        &self,
        id: i64,
        version: i64,
    ) -> Result<super::manifests::ManifestChange, AdminError> {
        let versions = store::manifest_history(&self.pool, id).await?;
        let Some(v) = versions.iter().find(|v| v.version == version) else {
            return Err(AdminError::NoSuchVersion(format!(
                "bot {id} has no manifest version {version}"
            )));
        };
        self.replace_manifest(id, &v.manifest.0.to_string()).await
    }
}

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", content = "line", rename_all = "lowercase")]
pub enum DiffLine {
    /// In both.
    Same(String),
    /// Only in the old text.
    Removed(String),
    /// Only in the new text.
    Added(String),
}

/// Longest inputs (in lines) diffed line by line; longer ones are shown as replaced whole.
const MAX_DIFF_LINES: usize = 2000;

/// A line diff from `old` to `new` (longest common subsequence).
pub fn diff_lines(old: &str, new: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len() > MAX_DIFF_LINES || b.len() > MAX_DIFF_LINES {
        return a
            .iter()
            .map(|l| DiffLine::Removed((*l).to_owned()))
            .chain(b.iter().map(|l| DiffLine::Added((*l).to_owned())))
            .collect();
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(DiffLine::Same(a[i].to_owned()));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(DiffLine::Removed(a[i].to_owned()));
            i += 1;
        } else {
            out.push(DiffLine::Added(b[j].to_owned()));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_keeps_common_lines_and_marks_the_rest() {
        use DiffLine::*;
        let cases: [(&str, &str, Vec<DiffLine>); 4] = [
            ("a", "a", vec![Same("a".into())]),
            ("", "x", vec![Added("x".into())]),
            ("x", "", vec![Removed("x".into())]),
            (
                "one\ntwo\nthree",
                "one\n2\nthree",
                vec![
                    Same("one".into()),
                    Removed("two".into()),
                    Added("2".into()),
                    Same("three".into()),
                ],
            ),
        ];
        for (old, new, expected) in cases {
            assert_eq!(diff_lines(old, new), expected, "{old:?} -> {new:?}");
        }
    }
}
