//! A small Rust tokenizer for the layers check: just enough to see paths, `use` trees,
//! `mod` items and attributes. Comments, strings, characters, numbers and lifetimes are
//! consumed so that a path written inside them (`"crate::x"`, `// super::y`) never counts
//! as an import. Pulling in `syn` would do this too, but xtask must stay quick to build
//! on a fresh machine, and the check needs no more than tokens.

/// One token of interest. Everything the scanner does not look at is `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An identifier or keyword (`r#` stripped from raw identifiers).
    Ident(String),
    /// `::`.
    PathSep,
    /// A single punctuation character (`{`, `}`, `;`, `#`, `*`, ...).
    Punct(char),
    /// A literal (string, character, number): its content never matters here.
    Lit,
}

/// A token and the 1-based line it starts on, for `file:line` in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub line: u32,
}

/// Splits Rust source into tokens.
///
/// Never fails: malformed input (an unterminated string, say) ends the token stream
/// early rather than erroring, because the compiler is the judge of syntax and the
/// check only has to see what it can.
///
/// Returns: the tokens in source order.
pub fn tokenize(src: &str) -> Vec<Token> {
    let mut lexer = Lexer {
        chars: src.chars().collect(),
        pos: 0,
        line: 1,
        out: Vec::new(),
    };
    lexer.run();
    lexer.out
}

/// Cursor over the source characters, counting lines as it goes.
struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: u32,
    out: Vec<Token>,
}

impl Lexer {
    /// Returns: the character `ahead` places past the cursor, if any.
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    /// Moves past one character, counting a newline.
    fn bump(&mut self) {
        if self.peek(0) == Some('\n') {
            self.line += 1;
        }
        self.pos += 1;
    }

    /// Records a token that started on `line`.
    fn push(&mut self, tok: Tok, line: u32) {
        self.out.push(Token { tok, line });
    }

    /// The main loop: dispatches on the first character of each token.
    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            let line = self.line;
            match c {
                c if c.is_whitespace() => self.bump(),
                '/' if self.peek(1) == Some('/') => self.line_comment(),
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => {
                    self.quoted('"');
                    self.push(Tok::Lit, line);
                }
                '\'' => self.quote_or_lifetime(line),
                c if c.is_ascii_digit() => {
                    self.number();
                    self.push(Tok::Lit, line);
                }
                c if c == '_' || c.is_alphabetic() => self.word(line),
                ':' if self.peek(1) == Some(':') => {
                    self.pos += 2;
                    self.push(Tok::PathSep, line);
                }
                c => {
                    self.bump();
                    self.push(Tok::Punct(c), line);
                }
            }
        }
    }

    /// Skips `// ...` up to (not past) the newline.
    fn line_comment(&mut self) {
        while self.peek(0).is_some_and(|c| c != '\n') {
            self.pos += 1;
        }
    }

    /// Skips `/* ... */`, which nests in Rust.
    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            if c == '/' && self.peek(1) == Some('*') {
                depth += 1;
                self.pos += 2;
            } else if c == '*' && self.peek(1) == Some('/') {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    /// Skips a `"..."` or `'...'` literal with backslash escapes, cursor on the opening
    /// quote.
    fn quoted(&mut self, quote: char) {
        self.bump();
        while let Some(c) = self.peek(0) {
            if c == '\\' {
                self.bump();
                self.bump();
            } else {
                self.bump();
                if c == quote {
                    return;
                }
            }
        }
    }

    /// Skips a raw string `r#"..."#` (any number of `#`), cursor on the first `#` or `"`.
    fn raw_string(&mut self) {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            hashes += 1;
            self.pos += 1;
        }
        self.bump(); // the opening quote
        while let Some(c) = self.peek(0) {
            self.bump();
            if c == '"' && (0..hashes).all(|i| self.peek(i) == Some('#')) {
                self.pos += hashes;
                return;
            }
        }
    }

    /// A `'` starts either a character literal (`'a'`, `'\n'`) or a lifetime/label
    /// (`'a`, `'static`): a character literal closes with a quote after one character or
    /// one escape. Lifetimes are dropped; nothing here needs them.
    fn quote_or_lifetime(&mut self, line: u32) {
        if self.peek(1) == Some('\\') || self.peek(2) == Some('\'') {
            self.quoted('\'');
            self.push(Tok::Lit, line);
        } else {
            self.pos += 1;
            while self
                .peek(0)
                .is_some_and(|c| c == '_' || c.is_alphanumeric())
            {
                self.pos += 1;
            }
        }
    }

    /// Skips a number, including suffixes (`0u32`), hex, and a fraction (`1.5`, but not
    /// the range in `1..2`).
    fn number(&mut self) {
        while let Some(c) = self.peek(0) {
            let fraction = c == '.' && self.peek(1).is_some_and(|d| d.is_ascii_digit());
            if c == '_' || c.is_alphanumeric() || fraction {
                self.pos += 1;
            } else {
                return;
            }
        }
    }

    /// An identifier, or a prefixed literal (`b"..."`, `r#"..."#`, `b'x'`, `c"..."`), or
    /// a raw identifier (`r#type`).
    fn word(&mut self, line: u32) {
        let start = self.pos;
        while self
            .peek(0)
            .is_some_and(|c| c == '_' || c.is_alphanumeric())
        {
            self.pos += 1;
        }
        let word: String = self.chars[start..self.pos].iter().collect();
        let next = self.peek(0);
        let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
        match next {
            Some('"') if matches!(word.as_str(), "b" | "c") => self.quoted('"'),
            Some('\'') if word == "b" => self.quoted('\''),
            Some('"') if raw_prefix => self.raw_string(),
            Some('#') if raw_prefix && self.hashes_then_quote() => self.raw_string(),
            Some('#') if word == "r" => {
                // r#ident: a raw identifier.
                self.pos += 1;
                let start = self.pos;
                while self
                    .peek(0)
                    .is_some_and(|c| c == '_' || c.is_alphanumeric())
                {
                    self.pos += 1;
                }
                let ident = self.chars[start..self.pos].iter().collect();
                self.push(Tok::Ident(ident), line);
                return;
            }
            _ => {
                self.push(Tok::Ident(word), line);
                return;
            }
        }
        self.push(Tok::Lit, line);
    }

    /// Returns: whether the cursor sits on `#...#"`, the opening of a raw string.
    fn hashes_then_quote(&self) -> bool {
        let mut i = 0;
        while self.peek(i) == Some('#') {
            i += 1;
        }
        self.peek(i) == Some('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(src: &str) -> Vec<String> {
        tokenize(src)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_and_strings_hide_paths() {
        let src = r####"
            // crate::a::b
            /* crate::c /* nested super::d */ still comment */
            let s = "crate::e \" crate::f";
            let r = r#"crate::g "# ;
            let b = br##"crate::h"##;
            let c = b'x';
            real
        "####;
        assert_eq!(
            idents(src),
            ["let", "s", "let", "r", "let", "b", "let", "c", "real"]
        );
    }

    #[test]
    fn lifetimes_chars_and_numbers() {
        let src = "fn f<'a>(x: &'a u8) -> char { '\\'' ; 'z' ; 1..2 ; 0x1fu32; 1.5 }";
        let toks = tokenize(src);
        assert_eq!(toks.iter().filter(|t| t.tok == Tok::Lit).count(), 6);
        assert!(idents(src).iter().all(|i| i != "a"));
    }

    #[test]
    fn path_separators_and_lines() {
        let toks = tokenize("use crate::x;\n\nsuper::y");
        let seps: Vec<u32> = toks
            .iter()
            .filter(|t| t.tok == Tok::PathSep)
            .map(|t| t.line)
            .collect();
        assert_eq!(seps, [1, 3]);
        assert_eq!(idents("r#type r#match"), ["type", "match"]);
    }
}
