//! Tokens into statements: a keyword, its values up to the end of the line, and the
//! block that may follow (`{` on the same line or the next). `include` is followed
//! here, relative to the including file's directory, with cycles reported.

use std::path::{Component, Path, PathBuf};

use super::{
    super::ConvertError,
    glob,
    lexer::{tokens, Kind, Token},
};

/// `include` and the variants keepalived knows (they differ in checks we need not make).
const INCLUDES: &[&str] = &[
    "include", "includer", "includem", "includew", "includeb", "includea",
];

/// One statement of keepalived.conf.
#[derive(Debug, Clone)]
pub struct Stmt {
    pub keyword: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Stmt>>,
    /// The file as shown to the operator, and the keyword's line.
    pub file: String,
    pub line: usize,
}

/// Returns: `path` with `dir/..` pairs and `.` taken out, without asking the file
/// system (for showing; `a/../b` and `b` are one file to the operator).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Reads files, following `include`.
pub struct Reader {
    /// The directory file names are shown relative to.
    base: PathBuf,
    /// The files being read, outermost first (to report include cycles).
    stack: Vec<PathBuf>,
    /// Include patterns that matched nothing: (file, line, pattern).
    pub unmatched: Vec<(String, usize, String)>,
}

impl Reader {
    /// A reader whose file names are shown relative to `base`.
    pub fn new(base: &Path) -> Self {
        Self {
            base: base.to_owned(),
            stack: Vec::new(),
            unmatched: Vec::new(),
        }
    }

    /// Returns: how `path` is shown: relative to the main file's directory when inside it.
    pub fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.base)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Parses the file at `path`.
    pub fn file(&mut self, path: &Path) -> Result<Vec<Stmt>, ConvertError> {
        let path = &normalize(path);
        let shown = self.show(path);
        let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        if let Some(i) = self.stack.iter().position(|p| *p == key) {
            let mut chain: Vec<String> = self.stack[i..].iter().map(|p| self.show(p)).collect();
            chain.push(shown);
            return Err(ConvertError::IncludeCycle {
                chain: chain.join(" -> "),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Read {
            file: shown.clone(),
            source,
        })?;
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        self.stack.push(key);
        let r = self.text(&shown, &text, &dir);
        self.stack.pop();
        r
    }

    /// Parses `text`, shown as `file`; its includes are relative to `dir`.
    pub fn text(&mut self, file: &str, text: &str, dir: &Path) -> Result<Vec<Stmt>, ConvertError> {
        let toks = tokens(file, text)?;
        let mut pos = 0;
        self.block(file, &toks, &mut pos, None, dir)
    }

    /// Parses statements until the `}` closing the block opened at line `opened`
    /// (`None`: the end of the file).
    fn block(
        &mut self,
        file: &str,
        toks: &[Token],
        pos: &mut usize,
        opened: Option<usize>,
        dir: &Path,
    ) -> Result<Vec<Stmt>, ConvertError> {
        let err = |line: usize, message: String| ConvertError::Parse {
            file: file.to_string(),
            line,
            message,
        };
        let mut out = Vec::new();
        loop {
            let Some(t) = toks.get(*pos) else {
                return match opened {
                    Some(line) => Err(err(
                        line,
                        "the `{` opened here is never closed: expected `}` before the end of the file"
                            .to_string(),
                    )),
                    None => Ok(out),
                };
            };
            *pos += 1;
            let keyword = match &t.kind {
                Kind::Newline => continue,
                Kind::Close if opened.is_some() => return Ok(out),
                Kind::Close => {
                    return Err(err(
                        t.line,
                        "unexpected `}`: no block is open here".to_string(),
                    ))
                }
                Kind::Open => return Err(err(t.line, "expected a keyword before `{`".to_string())),
                Kind::Word(w) => w.clone(),
            };
            let line = t.line;
            let mut args = Vec::new();
            while let Some(Token {
                kind: Kind::Word(w),
                ..
            }) = toks.get(*pos)
            {
                args.push(w.clone());
                *pos += 1;
            }
            // The block may open on the next line.
            let mut look = *pos;
            while toks.get(look).is_some_and(|t| t.kind == Kind::Newline) {
                look += 1;
            }
            let block = match toks.get(look) {
                Some(Token {
                    kind: Kind::Open,
                    line: open_line,
                }) => {
                    *pos = look + 1;
                    Some(self.block(file, toks, pos, Some(*open_line), dir)?)
                }
                _ => None,
            };
            if INCLUDES.contains(&keyword.as_str()) && block.is_none() {
                self.include(file, line, &args, dir, &mut out)?;
                continue;
            }
            out.push(Stmt {
                keyword,
                args,
                block,
                file: file.to_string(),
                line,
            });
        }
    }

    /// Follows `include PATTERN` (and keepalived's variants `includer` etc.): every
    /// file matching, in name order, is parsed and its statements take the include's
    /// place.
    fn include(
        &mut self,
        file: &str,
        line: usize,
        args: &[String],
        dir: &Path,
        out: &mut Vec<Stmt>,
    ) -> Result<(), ConvertError> {
        let [pattern] = args else {
            return Err(ConvertError::Parse {
                file: file.to_string(),
                line,
                message: "expected one file name or pattern after `include`".to_string(),
            });
        };
        let full = dir.join(pattern);
        let found = glob::matches(&full);
        if found.is_empty() {
            self.unmatched
                .push((file.to_string(), line, pattern.clone()));
        }
        for path in found {
            out.extend(self.file(&path)?);
        }
        Ok(())
    }
}
