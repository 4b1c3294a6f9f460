//! Configuration errors: every problem in a file is collected before failing, each with the
//! field path (`routes[2].upstream`) and the line it is on.

use std::fmt;

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueKind {
    /// The YAML does not fit the expected shape (unknown field, wrong type, missing field).
    #[error("{0}")]
    Shape(String),
    /// Two items share a name that must be unique.
    #[error("duplicate {what} `{name}` (first defined at {first})")]
    Duplicate {
        /// `route`, `agent`, ...
        what: &'static str,
        /// The repeated name.
        name: String,
        /// Path of the first definition.
        first: String,
    },
    /// A name refers to nothing defined.
    #[error("unknown {what} `{name}`{hint}")]
    UnknownReference {
        /// `upstream`, `issuer`, ...
        what: &'static str,
        /// The missing name.
        name: String,
        /// ", defined: a, b" to help fix typos.
        hint: String,
    },
    /// A value could not be interpreted.
    #[error("{0}")]
    Invalid(String),
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Field path such as `routes[2].upstream`; empty for the document itself.
    pub path: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: IssueKind,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.path.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.path, self.kind),
            (Some(l), true) => write!(f, "line {l}: {}", self.kind),
            (None, false) => write!(f, "{}: {}", self.path, self.kind),
            (None, true) => write!(f, "{}", self.kind),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// One or more problems in the file; all of them are listed.
    #[error("{} error(s) in {file}:\n{}", issues.len(), issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file (or `<string>`).
        file: String,
        /// Every problem found, in file order.
        issues: Vec<Issue>,
    },
}

impl ConfigError {
    /// The problems, for tests and tools (empty for I/O errors).
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid { issues, .. } => issues,
        }
    }
}
