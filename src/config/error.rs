//! Configuration errors. Each renders as one line that names the file and, where known,
//! the line, column and key, so an operator can go straight to the mistake.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file or directory root would read that a user other than root could change.
    #[error("{}: {why}: root reads only configuration that root alone can change", path.display())]
    Untrusted { path: PathBuf, why: String },
    /// Syntax errors, wrong types and unknown keys, found while reading one file.
    #[error("{location}: {message}")]
    Parse { location: Location, message: String },
    /// A value that is well-formed but not acceptable, found after all files are merged.
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

/// Where a configuration error is: `FILE[:LINE:COLUMN][: key `KEY`]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file that set the value, or `None` for a built-in default.
    pub file: Option<PathBuf>,
    pub line_column: Option<(usize, usize)>,
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => write!(f, "(built-in default)")?,
        }
        if let Some((line, column)) = self.line_column {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        Ok(())
    }
}
