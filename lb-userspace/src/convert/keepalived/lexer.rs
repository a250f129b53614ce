//! keepalived.conf as tokens: words (bare or `"quoted"`), `{`, `}` and line ends.
//! Comments run from `#` or `!` to the end of the line, wherever they start outside
//! quotes.

use super::super::ConvertError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Word(String),
    Open,
    Close,
    /// A line ends: a keyword's values stop here.
    Newline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub line: usize,
}

/// Splits `text` (the file shown as `file`) into tokens.
/// Returns: the tokens, or the line of a quoted string left open.
pub fn tokens(file: &str, text: &str) -> Result<Vec<Token>, ConvertError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<Token>, line: usize| {
        if !word.is_empty() {
            out.push(Token {
                kind: Kind::Word(std::mem::take(word)),
                line,
            });
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut out, line);
                out.push(Token {
                    kind: Kind::Newline,
                    line,
                });
                line += 1;
            }
            '#' | '!' => {
                flush(&mut word, &mut out, line);
                while chars.next_if(|&c| c != '\n').is_some() {}
            }
            '{' | '}' => {
                flush(&mut word, &mut out, line);
                let kind = if c == '{' { Kind::Open } else { Kind::Close };
                out.push(Token { kind, line });
            }
            '"' => {
                let start = line;
                let mut quoted = std::mem::take(&mut word);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if chars.peek() == Some(&'"') => {
                            chars.next();
                            quoted.push('"');
                        }
                        Some('\n') | None => {
                            return Err(ConvertError::Parse {
                                file: file.to_string(),
                                line: start,
                                message: "expected a closing `\"` before the end of the line"
                                    .to_string(),
                            })
                        }
                        Some(c) => quoted.push(c),
                    }
                }
                out.push(Token {
                    kind: Kind::Word(quoted),
                    line,
                });
            }
            c if c.is_whitespace() => flush(&mut word, &mut out, line),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out, line);
    out.push(Token {
        kind: Kind::Newline,
        line,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        tokens("t", text)
            .unwrap()
            .into_iter()
            .map(|t| match t.kind {
                Kind::Word(w) => w,
                Kind::Open => "{".into(),
                Kind::Close => "}".into(),
                Kind::Newline => "\\n".into(),
            })
            .collect()
    }

    #[test]
    fn comments_quotes_and_braces() {
        assert_eq!(
            words("a b{c}! x\n\"q # r\" # c\n"),
            ["a", "b", "{", "c", "}", "\\n", "q # r", "\\n", "\\n"]
        );
    }

    #[test]
    fn an_open_quote_names_its_line() {
        let e = tokens("k.conf", "a\nb \"open\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "k.conf:2: expected a closing `\"` before the end of the line"
        );
    }
}
