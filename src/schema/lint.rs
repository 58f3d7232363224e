//! Additive-only migration lint.
//!
//! During a rolling restart the previous binary keeps serving while the new one applies its
//! migrations, so a migration may only *add*: new tables, new nullable columns, new columns with
//! a default, concurrent indexes. This module finds, with file and line, every statement that
//! would break the previous binary (or lock a table the previous binary is writing to). A file
//! opts out of one rule with a comment `-- botvisor: allow <rule> <reason>`; see
//! `docs/migrations.md` for the rules and the safe alternatives.
//!
//! The lint is pure text analysis, no database: a small tokenizer that knows SQL comments,
//! quoted strings and identifiers and dollar-quoted bodies splits each file into statements, then
//! a handful of patterns are matched against each statement. The bodies of `DO` blocks are
//! linted like top-level SQL (they run when the migration runs), and so are string literals
//! passed to `EXECUTE` inside them; function bodies (`CREATE FUNCTION … AS $$ … $$`) are not,
//! because they only run when called.
//!
//! Invariants: a finding's line is the 1-based line where the offending clause starts; findings
//! of one file are ordered by line; files are linted in sorted order.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The migration folders linted when no folder is named (relative to the repository root).
pub const DEFAULT_DIRS: [&str; 2] = ["migrations/panel", "migrations/bot"];

/// Longest statement excerpt kept in a [`Finding`], in characters.
const EXCERPT_MAX_CHARS: usize = 120;

/// The kinds of statement the lint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// `ALTER TABLE … DROP [COLUMN]`.
    DropColumn,
    /// `DROP TABLE`.
    DropTable,
    /// `ALTER TABLE … RENAME [COLUMN] … TO` or `RENAME TO`.
    Rename,
    /// `ALTER COLUMN … [SET DATA] TYPE`.
    AlterType,
    /// `ALTER COLUMN … SET NOT NULL` on a table that already exists.
    SetNotNull,
    /// `ALTER COLUMN … DROP DEFAULT`.
    DropDefault,
    /// `ALTER TABLE … DROP CONSTRAINT`.
    DropConstraint,
    /// `ALTER TABLE … ADD [COLUMN] … NOT NULL` without a `DEFAULT`.
    NotNullWithoutDefault,
    /// `CREATE [UNIQUE] INDEX` without `CONCURRENTLY` on a table that already exists.
    IndexNotConcurrent,
    /// A `-- botvisor:` marker that names no known rule or gives no reason.
    InvalidMarker,
    /// `CREATE INDEX CONCURRENTLY` in a file sqlx runs inside a transaction, where it fails.
    ConcurrentIndexInTransaction,
}

impl Rule {
    /// The rules a `-- botvisor: allow <rule> <reason>` marker can switch off.
    pub const ALLOWABLE: [Rule; 9] = [
        Rule::DropColumn,
        Rule::DropTable,
        Rule::Rename,
        Rule::AlterType,
        Rule::SetNotNull,
        Rule::DropDefault,
        Rule::DropConstraint,
        Rule::NotNullWithoutDefault,
        Rule::IndexNotConcurrent,
    ];

    /// Every rule, allowable or not.
    pub const ALL: [Rule; 11] = [
        Rule::DropColumn,
        Rule::DropTable,
        Rule::Rename,
        Rule::AlterType,
        Rule::SetNotNull,
        Rule::DropDefault,
        Rule::DropConstraint,
        Rule::NotNullWithoutDefault,
        Rule::IndexNotConcurrent,
        Rule::InvalidMarker,
        Rule::ConcurrentIndexInTransaction,
    ];

    /// The kebab-case name used in reports and in allow markers.
    pub fn name(self) -> &'static str {
        match self {
            Rule::DropColumn => "drop-column",
            Rule::DropTable => "drop-table",
            Rule::Rename => "rename",
            Rule::AlterType => "alter-type",
            Rule::SetNotNull => "set-not-null",
            Rule::DropDefault => "drop-default",
            Rule::DropConstraint => "drop-constraint",
            Rule::NotNullWithoutDefault => "not-null-without-default",
            Rule::IndexNotConcurrent => "index-not-concurrent",
            Rule::InvalidMarker => "invalid-marker",
            Rule::ConcurrentIndexInTransaction => "concurrent-index-in-transaction",
        }
    }

    /// Whether an allow marker can switch this rule off.
    pub fn is_allowable(self) -> bool {
        Self::ALLOWABLE.contains(&self)
    }

    /// What goes wrong, for the report line.
    fn consequence(self) -> &'static str {
        match self {
            Rule::IndexNotConcurrent => {
                "locks the table against writes while the index builds; use CREATE INDEX \
                 CONCURRENTLY alone in a migration whose first line is `-- no-transaction`"
            }
            Rule::InvalidMarker => {
                "is not a valid marker; write `-- botvisor: allow <rule> <reason>` with a rule \
                 name from docs/migrations.md and a reason"
            }
            Rule::ConcurrentIndexInTransaction => {
                "fails inside a transaction; put it alone in its own migration file whose first \
                 line is `-- no-transaction`"
            }
            _ => "would break the previous binary while the new one starts",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule name that [`Rule::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown migration lint rule {0:?}")]
pub struct UnknownRule(pub String);

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|rule| rule.name() == s)
            .ok_or_else(|| UnknownRule(s.to_owned()))
    }
}

/// One offending statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file as given to [`lint_sql`] (for [`lint_dir`], the directory joined with the name).
    pub file: String,
    /// The 1-based line where the offending clause starts.
    pub line: usize,
    /// Which rule it breaks.
    pub rule: Rule,
    /// The offending statement with whitespace collapsed, shortened to a readable length.
    pub excerpt: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {} — {}",
            self.file,
            self.line,
            self.rule,
            self.excerpt,
            self.rule.consequence()
        )?;
        if self.rule.is_allowable() {
            write!(
                f,
                " (allow with \"-- botvisor: allow {} <reason>\")",
                self.rule
            )?;
        }
        Ok(())
    }
}

/// Why a directory could not be linted.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// The directory exists but could not be listed.
    #[error("cannot list migration directory {}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A migration file could not be read as UTF-8 text (sqlx requires UTF-8 too).
    #[error("cannot read migration file {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Lints every directory in `dirs` (or [`DEFAULT_DIRS`] when empty) and returns all findings.
///
/// This is the whole of `botvisor migrate lint [DIR…]` except printing: the command prints each
/// finding and exits non-zero when the list is not empty.
pub fn run_lint(dirs: &[PathBuf]) -> Result<Vec<Finding>, LintError> {
    let defaults: Vec<PathBuf> = DEFAULT_DIRS.iter().map(PathBuf::from).collect();
    let dirs = if dirs.is_empty() { &defaults[..] } else { dirs };
    let mut findings = Vec::new();
    for dir in dirs {
        findings.extend(lint_dir(dir)?);
    }
    Ok(findings)
}

/// Lints every `*.sql` file of `dir`, in sorted file-name order.
///
/// A directory that does not exist holds no migrations yet and yields no findings; a path naming
/// a single file lints that file.
pub fn lint_dir(dir: &Path) -> Result<Vec<Finding>, LintError> {
    if dir.is_file() {
        return lint_file(dir);
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LintError::ReadDir {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LintError::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "sql") {
            files.push(path);
        }
    }
    files.sort();
    let mut findings = Vec::new();
    for path in files {
        findings.extend(lint_file(&path)?);
    }
    Ok(findings)
}

fn lint_file(path: &Path) -> Result<Vec<Finding>, LintError> {
    let sql = std::fs::read_to_string(path).map_err(|source| LintError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(lint_sql(&path.display().to_string(), &sql))
}

/// Lints one migration's SQL text; `file_name` is only used to label the findings.
pub fn lint_sql(file_name: &str, sql: &str) -> Vec<Finding> {
    let mut unit = Unit::default();
    collect(sql, 1, false, &mut unit);

    let created = created_tables(&unit.statements);
    let (allowed, mut raw) = parse_markers(&unit.comments);
    for statement in &unit.statements {
        lint_statement(statement, &created, &mut raw);
    }
    raw.extend(check_concurrent_placement(sql, &unit));

    let mut findings: Vec<Finding> = raw
        .into_iter()
        .filter(|(_, rule, _)| !allowed.contains(rule))
        .map(|(line, rule, excerpt)| Finding {
            file: file_name.to_owned(),
            line,
            rule,
            excerpt,
        })
        .collect();
    findings.sort_by_key(|f| (f.line, f.rule));
    findings
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A keyword or unquoted identifier.
    Word,
    /// A double-quoted identifier; `text` is the identifier without quotes.
    Quoted,
    /// A single-quoted string; `text` is its value with escapes resolved.
    Str,
    /// A dollar-quoted body; `text` is the body without the delimiters.
    Dollar,
    /// Punctuation, operators and numbers, one token each.
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    text: String,
    line: usize,
}

impl Token {
    fn is(&self, keyword: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    fn is_punct(&self, punct: &str) -> bool {
        self.kind == Kind::Other && self.text == punct
    }

    /// How the token reads in an excerpt.
    fn display(&self) -> String {
        match self.kind {
            Kind::Quoted => format!("\"{}\"", self.text.replace('"', "\"\"")),
            Kind::Str => format!("'{}'", self.text.replace('\'', "''")),
            Kind::Dollar => "$$…$$".to_owned(),
            Kind::Word | Kind::Other => self.text.clone(),
        }
    }
}

/// A `--` comment: its text after the dashes and its line.
#[derive(Debug, Clone)]
struct Comment {
    text: String,
    line: usize,
}

/// Splits `src` into tokens and line comments; `first_line` is the line `src` starts on.
fn tokenize(src: &str, first_line: usize) -> (Vec<Token>, Vec<Comment>) {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut comments = Vec::new();
    let mut line = first_line;
    let mut pos = 0;
    let newlines = |from: usize, to: usize| bytes[from..to].iter().filter(|&&b| b == b'\n').count();

    while pos < bytes.len() {
        let start = pos;
        let start_line = line;
        let b = bytes[pos];
        let rest = &src[pos..];
        if b.is_ascii_whitespace() {
            pos += 1;
        } else if rest.starts_with('\u{feff}') {
            pos += '\u{feff}'.len_utf8();
        } else if rest.starts_with("--") {
            let end = rest.find('\n').map_or(bytes.len(), |i| pos + i);
            comments.push(Comment {
                text: src[pos + 2..end].to_owned(),
                line,
            });
            pos = end;
        } else if rest.starts_with("/*") {
            // PostgreSQL block comments nest.
            let mut depth = 0usize;
            while pos < bytes.len() {
                if src[pos..].starts_with("/*") {
                    depth += 1;
                    pos += 2;
                } else if src[pos..].starts_with("*/") {
                    depth -= 1;
                    pos += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    pos += 1;
                }
            }
        } else if b == b'\'' {
            // An `E'…'` string: the `E` was just read as a word ending right here.
            let escapes = start > 0
                && matches!(bytes[start - 1], b'e' | b'E')
                && tokens.last().is_some_and(|t: &Token| {
                    t.kind == Kind::Word && t.text.eq_ignore_ascii_case("e")
                });
            if escapes {
                tokens.pop();
            }
            let (value, end) = quoted(src, pos, b'\'', escapes);
            pos = end;
            tokens.push(Token {
                kind: Kind::Str,
                text: value,
                line: start_line,
            });
        } else if b == b'"' {
            let (value, end) = quoted(src, pos, b'"', false);
            pos = end;
            tokens.push(Token {
                kind: Kind::Quoted,
                text: value,
                line: start_line,
            });
        } else if let Some(tag_len) = dollar_tag_len(rest) {
            let tag = &rest[..tag_len];
            let body_start = pos + tag_len;
            let (body_end, end) = match src[body_start..].find(tag) {
                Some(i) => (body_start + i, body_start + i + tag_len),
                None => (bytes.len(), bytes.len()),
            };
            tokens.push(Token {
                kind: Kind::Dollar,
                text: src[body_start..body_end].to_owned(),
                line: start_line,
            });
            pos = end;
        } else if is_word_start(b) {
            while pos < bytes.len() && is_word_continue(bytes[pos]) {
                pos += 1;
            }
            tokens.push(Token {
                kind: Kind::Word,
                text: src[start..pos].to_owned(),
                line: start_line,
            });
        } else {
            if b.is_ascii_digit() {
                while pos < bytes.len()
                    && (bytes[pos].is_ascii_alphanumeric() || bytes[pos] == b'.')
                {
                    pos += 1;
                }
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
            tokens.push(Token {
                kind: Kind::Other,
                text: src[start..pos].to_owned(),
                line: start_line,
            });
        }
        line += newlines(start, pos);
    }
    (tokens, comments)
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_continue(b: u8) -> bool {
    is_word_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The length of the `$tag$` opening a dollar-quoted body at the start of `s`, if any.
fn dollar_tag_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'$') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() && bytes[i] != b'$' {
        let ok = if i == 1 {
            bytes[i].is_ascii_alphabetic() || bytes[i] == b'_' || bytes[i] >= 0x80
        } else {
            is_word_continue(bytes[i]) && bytes[i] != b'$'
        };
        if !ok {
            return None;
        }
        i += 1;
    }
    (i < bytes.len()).then_some(i + 1)
}

/// Reads a quoted string or identifier starting at `pos`; doubled quotes stand for one, and with
/// `backslash` (an `E'…'` string) a backslash escapes the next character. Returns the value and
/// the position after the closing quote (or the end of input when unterminated).
fn quoted(src: &str, pos: usize, quote: u8, backslash: bool) -> (String, usize) {
    let bytes = src.as_bytes();
    let mut value = Vec::new();
    let mut i = pos + 1;
    while i < bytes.len() {
        let b = bytes[i];
        if backslash && b == b'\\' && i + 1 < bytes.len() {
            value.push(bytes[i + 1]);
            i += 2;
        } else if b == quote {
            if bytes.get(i + 1) == Some(&quote) {
                value.push(quote);
                i += 2;
            } else {
                return (String::from_utf8_lossy(&value).into_owned(), i + 1);
            }
        } else {
            value.push(b);
            i += 1;
        }
    }
    (String::from_utf8_lossy(&value).into_owned(), bytes.len())
}

// ---------------------------------------------------------------------------------------------
// Statements

/// Everything that executes when a migration runs: its statements, including those inside `DO`
/// blocks and `EXECUTE` strings there, and the comments found along the way.
#[derive(Debug, Default)]
struct Unit {
    statements: Vec<Vec<Token>>,
    comments: Vec<Comment>,
    /// Number of non-empty top-level statements.
    top_level_statements: usize,
}

/// Tokenizes `src` and appends its statements to `unit`, descending into `DO` bodies and, within
/// procedural code (`in_plpgsql`), into string literals passed to `EXECUTE`.
fn collect(src: &str, first_line: usize, in_plpgsql: bool, unit: &mut Unit) {
    let (tokens, comments) = tokenize(src, first_line);
    unit.comments.extend(comments);
    for statement in tokens.split(|t| t.is_punct(";")) {
        if statement.is_empty() {
            continue;
        }
        if !in_plpgsql {
            unit.top_level_statements += 1;
        }
        if statement[0].is("DO")
            && let Some(body) = statement
                .iter()
                .find(|t| matches!(t.kind, Kind::Dollar | Kind::Str))
        {
            collect(&body.text, body.line, true, unit);
        }
        if in_plpgsql {
            for pair in statement.windows(2) {
                if pair[0].is("EXECUTE") && pair[1].kind == Kind::Str {
                    collect(&pair[1].text, pair[1].line, true, unit);
                }
            }
        }
        unit.statements.push(statement.to_vec());
    }
}

/// The normalized name at `tokens[i]` (the last part of a qualified name: unquoted names fold to
/// lower case) and the index after it.
fn name_at(tokens: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = None;
    loop {
        let token = tokens.get(i)?;
        name = Some(match token.kind {
            Kind::Word => token.text.to_ascii_lowercase(),
            Kind::Quoted => token.text.clone(),
            _ => return name.map(|n| (n, i)),
        });
        i += 1;
        if tokens.get(i).is_some_and(|t| t.is_punct(".")) {
            i += 1;
        } else {
            return name.map(|n| (n, i));
        }
    }
}

/// Skips the keywords `words` at `tokens[i..]` if all are there, returning the index after them.
fn skip(tokens: &[Token], i: usize, words: &[&str]) -> usize {
    let matched = words
        .iter()
        .enumerate()
        .all(|(k, w)| tokens.get(i + k).is_some_and(|t| t.is(w)));
    if matched { i + words.len() } else { i }
}

/// Tables created by a plain `CREATE [TEMP|UNLOGGED] TABLE name` in this file.
///
/// `CREATE TABLE IF NOT EXISTS` does not count: the table may already exist, full of rows.
fn created_tables(statements: &[Vec<Token>]) -> HashSet<String> {
    let mut created = HashSet::new();
    for statement in statements {
        for i in 0..statement.len() {
            if !statement[i].is("CREATE") {
                continue;
            }
            let mut j = i + 1;
            for word in ["GLOBAL", "LOCAL", "TEMPORARY", "TEMP", "UNLOGGED"] {
                j = skip(statement, j, &[word]);
            }
            if !statement.get(j).is_some_and(|t| t.is("TABLE")) {
                continue;
            }
            j += 1;
            if skip(statement, j, &["IF", "NOT", "EXISTS"]) != j {
                continue;
            }
            if let Some((name, _)) = name_at(statement, j) {
                created.insert(name);
            }
        }
    }
    created
}

type RawFinding = (usize, Rule, String);

fn excerpt(tokens: &[Token]) -> String {
    let mut out = String::new();
    let mut previous: Option<&Token> = None;
    for token in tokens {
        let glue = previous.is_none_or(|p| p.is_punct("(") || p.is_punct("."))
            || token.is_punct(")")
            || token.is_punct(",")
            || token.is_punct(".")
            || (token.is_punct("(") && previous.is_some_and(|p| p.kind != Kind::Other));
        if !glue {
            out.push(' ');
        }
        out.push_str(&token.display());
        previous = Some(token);
    }
    excerpt_limit(out)
}

/// Splits `tokens` at commas outside parentheses.
fn split_top_level_commas(tokens: &[Token]) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, token) in tokens.iter().enumerate() {
        if token.is_punct("(") {
            depth += 1;
        } else if token.is_punct(")") {
            depth -= 1;
        } else if token.is_punct(",") && depth == 0 {
            parts.push(&tokens[start..i]);
            start = i + 1;
        }
    }
    parts.push(&tokens[start..]);
    parts
}

/// The tokens of `tokens` that are outside parentheses.
fn top_level(tokens: &[Token]) -> Vec<&Token> {
    let mut depth = 0i32;
    let mut out = Vec::new();
    for token in tokens {
        if token.is_punct("(") {
            depth += 1;
        } else if token.is_punct(")") {
            depth -= 1;
        } else if depth == 0 {
            out.push(token);
        }
    }
    out
}

fn lint_statement(statement: &[Token], created: &HashSet<String>, out: &mut Vec<RawFinding>) {
    for i in 0..statement.len() {
        let next_is = |word: &str| statement.get(i + 1).is_some_and(|t| t.is(word));
        let token = &statement[i];
        if token.is("ALTER") && next_is("TABLE") {
            lint_alter_table(&statement[i..], created, out);
            return;
        }
        if token.is("DROP") && next_is("TABLE") {
            out.push((token.line, Rule::DropTable, excerpt(&statement[i..])));
            return;
        }
        if token.is("CREATE") {
            let j = skip(statement, i + 1, &["UNIQUE"]);
            if statement.get(j).is_some_and(|t| t.is("INDEX")) {
                lint_create_index(&statement[i..], j + 1 - i, created, out);
                return;
            }
        }
    }
}

/// `stmt` starts at `ALTER TABLE`.
fn lint_alter_table(stmt: &[Token], created: &HashSet<String>, out: &mut Vec<RawFinding>) {
    let mut i = skip(stmt, 2, &["IF", "EXISTS"]);
    i = skip(stmt, i, &["ONLY"]);
    let Some((table, mut i)) = name_at(stmt, i) else {
        return;
    };
    if stmt.get(i).is_some_and(|t| t.is_punct("*")) {
        i += 1;
    }
    if created.contains(&table) {
        // The previous binary does not know this table: anything goes.
        return;
    }
    let head = &stmt[..i];
    for action in split_top_level_commas(&stmt[i..]) {
        if let Some(rule) = alter_action_rule(action) {
            let mut text = excerpt(head);
            text.push(' ');
            text.push_str(&excerpt(action));
            out.push((action[0].line, rule, excerpt_limit(text)));
        }
    }
}

fn excerpt_limit(text: String) -> String {
    if text.chars().count() > EXCERPT_MAX_CHARS {
        let mut short: String = text.chars().take(EXCERPT_MAX_CHARS - 1).collect();
        short.push('…');
        short
    } else {
        text
    }
}

/// The rule one `ALTER TABLE` action breaks, if any.
fn alter_action_rule(action: &[Token]) -> Option<Rule> {
    let first = action.first()?;
    let second_is = |word: &str| action.get(1).is_some_and(|t| t.is(word));
    if first.is("DROP") {
        return Some(if second_is("CONSTRAINT") {
            Rule::DropConstraint
        } else {
            Rule::DropColumn
        });
    }
    if first.is("RENAME") {
        return (!second_is("CONSTRAINT")).then_some(Rule::Rename);
    }
    if first.is("ALTER") {
        if second_is("CONSTRAINT") {
            return None;
        }
        let column = skip(action, 1, &["COLUMN"]);
        let (_, i) = name_at(action, column)?;
        let is_at = |k: usize, word: &str| action.get(i + k).is_some_and(|t| t.is(word));
        if is_at(0, "TYPE") || (is_at(0, "SET") && is_at(1, "DATA") && is_at(2, "TYPE")) {
            return Some(Rule::AlterType);
        }
        if is_at(0, "SET") && is_at(1, "NOT") && is_at(2, "NULL") {
            return Some(Rule::SetNotNull);
        }
        if is_at(0, "DROP") && is_at(1, "DEFAULT") {
            return Some(Rule::DropDefault);
        }
        return None;
    }
    if first.is("ADD") {
        const TABLE_CONSTRAINTS: [&str; 6] = [
            "CONSTRAINT",
            "PRIMARY",
            "UNIQUE",
            "FOREIGN",
            "CHECK",
            "EXCLUDE",
        ];
        if TABLE_CONSTRAINTS.iter().any(|w| second_is(w)) {
            return None;
        }
        let mut i = skip(action, 1, &["COLUMN"]);
        i = skip(action, i, &["IF", "NOT", "EXISTS"]);
        let (_, i) = name_at(action, i)?;
        let definition = top_level(&action[i..]);
        let serial = definition.first().is_some_and(|t| {
            [
                "SERIAL",
                "BIGSERIAL",
                "SMALLSERIAL",
                "SERIAL2",
                "SERIAL4",
                "SERIAL8",
            ]
            .iter()
            .any(|w| t.is(w))
        });
        let has_default = serial
            || definition
                .iter()
                .any(|t| t.is("DEFAULT") || t.is("GENERATED"));
        let not_null = definition
            .windows(2)
            .any(|w| (w[0].is("NOT") && w[1].is("NULL")) || (w[0].is("PRIMARY") && w[1].is("KEY")));
        return (not_null && !has_default).then_some(Rule::NotNullWithoutDefault);
    }
    None
}

/// `stmt` starts at `CREATE`; `after_index` is the offset just after the `INDEX` keyword.
fn lint_create_index(
    stmt: &[Token],
    after_index: usize,
    created: &HashSet<String>,
    out: &mut Vec<RawFinding>,
) {
    if stmt.get(after_index).is_some_and(|t| t.is("CONCURRENTLY")) {
        return;
    }
    let Some(on) = stmt.iter().position(|t| t.is("ON")) else {
        return;
    };
    let i = skip(stmt, on + 1, &["ONLY"]);
    let Some((table, _)) = name_at(stmt, i) else {
        return;
    };
    if !created.contains(&table) {
        out.push((stmt[0].line, Rule::IndexNotConcurrent, excerpt(stmt)));
    }
}

/// `CREATE INDEX CONCURRENTLY` (and `DROP INDEX CONCURRENTLY`) cannot run in a transaction
/// block; sqlx wraps each migration in one unless its first line is `-- no-transaction`, and
/// PostgreSQL runs several statements sent at once as an implicit transaction, so the statement
/// must also be alone in its file.
fn check_concurrent_placement(sql: &str, unit: &Unit) -> Vec<RawFinding> {
    let alone = sql.starts_with("-- no-transaction") && unit.top_level_statements == 1;
    if alone {
        return Vec::new();
    }
    let mut out = Vec::new();
    for statement in &unit.statements {
        for (i, token) in statement.iter().enumerate() {
            let k = if token.is("CREATE") {
                skip(statement, i + 1, &["UNIQUE"])
            } else if token.is("DROP") {
                i + 1
            } else {
                continue;
            };
            if statement.get(k).is_some_and(|t| t.is("INDEX"))
                && statement.get(k + 1).is_some_and(|t| t.is("CONCURRENTLY"))
            {
                out.push((
                    token.line,
                    Rule::ConcurrentIndexInTransaction,
                    excerpt(&statement[i..]),
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Markers

/// Reads the `-- botvisor: allow <rule> <reason>` markers: the rules they allow, and a finding
/// for each marker that is malformed.
fn parse_markers(comments: &[Comment]) -> (HashSet<Rule>, Vec<RawFinding>) {
    let mut allowed = HashSet::new();
    let mut invalid = Vec::new();
    for comment in comments {
        let text = comment.text.trim();
        let Some(rest) = strip_prefix_ignore_case(text, "botvisor") else {
            continue;
        };
        let (has_colon, rest) = match rest.strip_prefix(':') {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        let mut words = rest.split_whitespace();
        let first = words.next();
        if !has_colon && first != Some("allow") {
            // An ordinary comment that happens to start with the word "botvisor".
            continue;
        }
        let rule = words.next().and_then(|name| name.parse::<Rule>().ok());
        let has_reason = words.next().is_some();
        match (has_colon, first, rule) {
            (true, Some("allow"), Some(rule)) if rule.is_allowable() && has_reason => {
                allowed.insert(rule);
            }
            _ => invalid.push((
                comment.line,
                Rule::InvalidMarker,
                format!("--{}", comment.text),
            )),
        }
    }
    (allowed, invalid)
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str) -> Vec<(usize, Rule)> {
        lint_sql("t.sql", sql)
            .into_iter()
            .map(|f| (f.line, f.rule))
            .collect()
    }

    #[test]
    fn each_rule_fires_on_its_statement() {
        use Rule::*;
        let cases: &[(&str, &[Rule])] = &[
            ("ALTER TABLE users DROP COLUMN foo;", &[DropColumn]),
            ("ALTER TABLE users DROP foo;", &[DropColumn]),
            (
                "ALTER TABLE IF EXISTS ONLY public.users DROP COLUMN IF EXISTS foo;",
                &[DropColumn],
            ),
            ("DROP TABLE users;", &[DropTable]),
            ("DROP TABLE IF EXISTS users, orders CASCADE;", &[DropTable]),
            ("ALTER TABLE users RENAME TO people;", &[Rename]),
            ("ALTER TABLE users RENAME COLUMN a TO b;", &[Rename]),
            ("ALTER TABLE users RENAME a TO b;", &[Rename]),
            (
                "ALTER TABLE users ALTER COLUMN a TYPE bigint;",
                &[AlterType],
            ),
            (
                "ALTER TABLE users ALTER a SET DATA TYPE text;",
                &[AlterType],
            ),
            (
                "ALTER TABLE users ALTER COLUMN a SET NOT NULL;",
                &[SetNotNull],
            ),
            (
                "ALTER TABLE users ALTER COLUMN a DROP DEFAULT;",
                &[DropDefault],
            ),
            (
                "ALTER TABLE users DROP CONSTRAINT users_pkey;",
                &[DropConstraint],
            ),
            (
                "ALTER TABLE users ADD COLUMN a int NOT NULL;",
                &[NotNullWithoutDefault],
            ),
            (
                "ALTER TABLE users ADD a int NOT NULL REFERENCES t(id);",
                &[NotNullWithoutDefault],
            ),
            (
                "ALTER TABLE users ADD COLUMN a int PRIMARY KEY;",
                &[NotNullWithoutDefault],
            ),
            ("CREATE INDEX users_a ON users (a);", &[IndexNotConcurrent]),
            (
                "CREATE UNIQUE INDEX IF NOT EXISTS u ON ONLY users (a);",
                &[IndexNotConcurrent],
            ),
            (
                "CREATE INDEX ON users USING gin (a);",
                &[IndexNotConcurrent],
            ),
            (
                "ALTER TABLE users ADD COLUMN a int, DROP COLUMN b, ALTER c TYPE text;",
                &[DropColumn, AlterType],
            ),
        ];
        for (sql, expected) in cases {
            let got: Vec<Rule> = rules(sql).into_iter().map(|(_, r)| r).collect();
            assert_eq!(&got, expected, "{sql}");
        }
    }

    #[test]
    fn safe_statements_pass() {
        let cases = [
            "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL);",
            "ALTER TABLE users ADD COLUMN a int;",
            "ALTER TABLE users ADD COLUMN IF NOT EXISTS a int;",
            "ALTER TABLE users ADD COLUMN a int NOT NULL DEFAULT 0;",
            "ALTER TABLE users ADD COLUMN a timestamptz DEFAULT now() NOT NULL;",
            "ALTER TABLE users ADD COLUMN id bigserial;",
            "ALTER TABLE users ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;",
            "ALTER TABLE users ADD COLUMN a int CHECK (a IS NOT NULL);",
            "ALTER TABLE users ADD CONSTRAINT c CHECK (a IS NOT NULL) NOT VALID;",
            "ALTER TABLE users ALTER COLUMN a DROP NOT NULL;",
            "ALTER TABLE users ALTER COLUMN a SET DEFAULT 0;",
            "ALTER TABLE users RENAME CONSTRAINT a TO b;",
            "ALTER TABLE users VALIDATE CONSTRAINT c;",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY users_a ON users (a);",
            "-- no-transaction\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS u ON users (a);",
            "CREATE TABLE t (a int); CREATE INDEX t_a ON t (a);",
            "CREATE TABLE t (a int); ALTER TABLE t ALTER a SET NOT NULL;",
            "CREATE TABLE t (a int); ALTER TABLE t ADD b int NOT NULL;",
            "SELECT 'DROP TABLE users; ALTER TABLE users DROP COLUMN a';",
            "-- DROP TABLE users;\n/* ALTER TABLE users DROP COLUMN a; /* nested */ */ SELECT 1;",
            "COMMENT ON COLUMN users.a IS 'do not DROP TABLE';",
            "SELECT \"DROP\" FROM \"TABLE\";",
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DROP TABLE x; \
             RETURN NEW; END $$;",
            "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1 $body$ LANGUAGE sql;",
            "SELECT E'it\\'s DROP TABLE x';",
        ];
        for sql in cases {
            assert_eq!(rules(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn do_blocks_are_linted_with_their_lines() {
        let sql = "CREATE TABLE a (id int);\n\
                   DO $$\n\
                   BEGIN\n\
                     IF NOT EXISTS (SELECT 1 FROM information_schema.columns\n\
                                    WHERE table_name = 'users' AND column_name = 'x') THEN\n\
                       ALTER TABLE users\n\
                         ADD COLUMN x int NOT NULL;\n\
                     END IF;\n\
                     EXECUTE 'ALTER TABLE users DROP COLUMN y';\n\
                   END $$;\n";
        assert_eq!(
            rules(sql),
            vec![(7, Rule::NotNullWithoutDefault), (9, Rule::DropColumn)]
        );
        let tagged = "DO $do$ BEGIN\nDROP TABLE old; END $do$ LANGUAGE plpgsql;";
        assert_eq!(rules(tagged), vec![(2, Rule::DropTable)]);
    }

    #[test]
    fn lines_point_at_the_clause() {
        let sql = "-- header\n\nALTER TABLE users\n  ADD COLUMN a int,\n  DROP COLUMN b;\n\
                   \nCREATE INDEX i\n  ON users (a);\n";
        assert_eq!(
            rules(sql),
            vec![(5, Rule::DropColumn), (7, Rule::IndexNotConcurrent)]
        );
    }

    #[test]
    fn create_table_if_not_exists_does_not_exempt() {
        let sql = "CREATE TABLE IF NOT EXISTS t (a int); CREATE INDEX ON t (a);";
        assert_eq!(rules(sql), vec![(1, Rule::IndexNotConcurrent)]);
    }

    #[test]
    fn markers_allow_rules_and_bad_markers_are_findings() {
        let allowed = "-- botvisor: allow drop-column removed in release 4, unused since 2\n\
                       ALTER TABLE users DROP COLUMN foo;";
        assert_eq!(rules(allowed), vec![]);

        let other_rule = "-- botvisor: allow drop-table reason\nALTER TABLE u DROP COLUMN foo;";
        assert_eq!(rules(other_rule), vec![(2, Rule::DropColumn)]);

        let cases = [
            "-- botvisor: allow drop-colum typo in the name",
            "-- botvisor: allow drop-column",
            "-- botvisor: permit drop-column reason",
            "-- botvisor allow drop-column missing colon",
            "-- botvisor: allow invalid-marker cannot allow this",
        ];
        for marker in cases {
            assert_eq!(rules(marker), vec![(1, Rule::InvalidMarker)], "{marker}");
        }
        assert_eq!(rules("-- botvisor keeps this table small"), vec![]);
        assert_eq!(rules("SELECT '-- botvisor: allow nonsense';"), vec![]);
    }

    #[test]
    fn concurrent_index_needs_its_own_no_transaction_file() {
        let in_tx = "CREATE INDEX CONCURRENTLY i ON users (a);";
        assert_eq!(rules(in_tx), vec![(1, Rule::ConcurrentIndexInTransaction)]);
        let two = "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON users (a);\nSELECT 1;";
        assert_eq!(rules(two), vec![(2, Rule::ConcurrentIndexInTransaction)]);
    }

    #[test]
    fn rule_names_round_trip() {
        for rule in Rule::ALL {
            assert_eq!(rule.name().parse::<Rule>(), Ok(rule));
        }
        assert!("drop".parse::<Rule>().is_err());
    }

    #[test]
    fn display_matches_the_documented_shape() {
        let finding = lint_sql(
            "migrations/bot/0002_x.sql",
            "\n\nALTER TABLE users DROP COLUMN foo;",
        );
        assert_eq!(
            finding[0].to_string(),
            "migrations/bot/0002_x.sql:3: drop-column: ALTER TABLE users DROP COLUMN foo — would \
             break the previous binary while the new one starts (allow with \"-- botvisor: allow \
             drop-column <reason>\")"
        );
    }
}
