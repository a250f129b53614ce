//! What a conversion says about its input: one finding per source line that did not map
//! exactly, named by file and line.

use std::fmt;

/// How much a finding matters to the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Belongs to keepalived, which keeps doing it (VRRP): stderr only.
    Info,
    /// Mapped, with a remark worth reading in the output: a YAML comment only.
    Note,
    /// No equivalent in xdpvs, or mapped with a difference in behaviour: a YAML comment
    /// and a line on stderr.
    Warning,
}

/// One remark about one source line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// The source file as shown to the operator (relative to the main file's directory).
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Info => "info",
            Level::Note => "note",
            Level::Warning => "warning",
        };
        if self.line == 0 {
            write!(f, "{level}: {}: {}", self.file, self.message)
        } else {
            write!(f, "{level}: {}:{}: {}", self.file, self.line, self.message)
        }
    }
}

/// Where a piece of input came from (line 0: the input as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// Every finding of one conversion, in the order the input was read.
#[derive(Debug, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    fn push(&mut self, level: Level, at: &At, message: String) -> String {
        let comment = format!("{at}: {message}");
        let finding = Finding {
            level,
            file: at.file.clone(),
            line: at.line,
            message,
        };
        // A group of virtual servers maps one source line several times: say it once.
        if !self.0.contains(&finding) {
            self.0.push(finding);
        }
        comment
    }

    /// Records a warning. Returns: the comment the output carries for it.
    pub fn warn(&mut self, at: &At, message: impl Into<String>) -> String {
        self.push(Level::Warning, at, message.into())
    }

    /// Records a note. Returns: the comment the output carries for it.
    pub fn note(&mut self, at: &At, message: impl Into<String>) -> String {
        self.push(Level::Note, at, message.into())
    }

    /// Puts the findings in source order within each file; files keep the order they
    /// were first reported in, and remarks about a whole file (line 0) come first.
    pub fn sort(&mut self) {
        let mut files: Vec<String> = Vec::new();
        for f in &self.0 {
            if !files.contains(&f.file) {
                files.push(f.file.clone());
            }
        }
        self.0
            .sort_by_key(|f| (files.iter().position(|x| *x == f.file), f.line));
    }

    /// Records an informational line (stderr only).
    pub fn info(&mut self, at: &At, message: impl Into<String>) {
        self.push(Level::Info, at, message.into());
    }
}
