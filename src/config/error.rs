//! Errors of the configuration loader: a list of diagnostics, each pointing at
//! a place in the file, so that `check` can show every problem in one pass.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file (e.g. it cannot be read).
    pub line: usize,
    /// 1-based, counted in characters; 0 together with `line == 0`.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Why a configuration could not be loaded: every diagnostic found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// A problem with the file as a whole (no line or column).
    pub(crate) fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            diagnostics: vec![Diagnostic {
                file: file.to_path_buf(),
                line: 0,
                column: 0,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics while the file is validated, turning byte offsets
/// (what the TOML parser reports) into lines and columns (what editors show).
pub(crate) struct Diags<'a> {
    file: &'a Path,
    text: &'a str,
    list: Vec<Diagnostic>,
    /// Problems that do not make the file invalid (e.g. a world-readable
    /// password file); kept in [`super::Config::warnings`].
    warnings: Vec<Diagnostic>,
}

impl<'a> Diags<'a> {
    pub(crate) fn new(file: &'a Path, text: &'a str) -> Self {
        Diags {
            file,
            text,
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn diagnostic(&self, span: Range<usize>, message: String) -> Diagnostic {
        let (line, column) = line_column(self.text, span.start);
        Diagnostic {
            file: self.file.to_path_buf(),
            line,
            column,
            message,
        }
    }

    pub(crate) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.diagnostic(span, message.into());
        self.list.push(d);
    }

    pub(crate) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.diagnostic(span, message.into());
        self.warnings.push(d);
    }

    pub(crate) fn take_warnings(&mut self) -> Vec<Diagnostic> {
        std::mem::take(&mut self.warnings)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The line (1-based) of a byte offset, to refer to another place in a message.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        line_column(self.text, offset).0
    }

    pub(crate) fn into_error(mut self) -> ConfigError {
        // Sections are visited in key order, not file order; sort so the
        // output reads top to bottom. The sort is stable, so several problems
        // at one place keep the order they were found in.
        self.list.sort_by_key(|d| (d.line, d.column));
        ConfigError {
            diagnostics: self.list,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset into `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
