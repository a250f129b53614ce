//! The file-name patterns `include` takes: `*`, `?` and `[...]` in any path component,
//! as glob(3) reads them (brace expressions are not expanded).

use std::path::{Component, Path, PathBuf};

/// Returns: whether `name` matches the glob `pat` (`*`, `?`, `[abc]`, `[a-z]`, `[!a]`).
/// A leading dot must be matched by a dot, as glob(3) does.
pub fn matches_name(pat: &str, name: &str) -> bool {
    if name.starts_with('.') && !pat.starts_with('.') {
        return false;
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else {
                    return false;
                };
                let (negate, set) = match p[1] {
                    '!' | '^' => (true, &p[2..end]),
                    _ => (false, &p[1..end]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= (set[i]..=set[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[end + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

fn wild(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Returns: the existing files that `pattern` names, sorted (a pattern without
/// wildcards: the file itself if it exists).
pub fn matches(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for base in &found {
            if matches!(comp, Component::Normal(_)) && wild(&part) {
                let dir = if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base.as_path()
                };
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| matches_name(&part, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            } else {
                next.push(base.join(comp));
            }
        }
        found = next;
    }
    found.retain(|p| p.is_file());
    found
}

#[cfg(test)]
mod tests {
    use super::matches_name;

    #[test]
    fn wildcards_match_as_glob_does() {
        assert!(matches_name("*.conf", "web.conf"));
        assert!(!matches_name("*.conf", "web.conf.bak"));
        assert!(!matches_name("*.conf", ".hidden.conf"));
        assert!(matches_name("vs?.conf", "vs1.conf"));
        assert!(matches_name("vs[0-9].conf", "vs7.conf"));
        assert!(!matches_name("vs[!0-9].conf", "vs7.conf"));
        assert!(matches_name("plain", "plain"));
    }
}
