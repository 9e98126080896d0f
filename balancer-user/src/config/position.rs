//! Where an error is: the line and column of a byte offset, and the key path
//! (`vip[1] ("web").port`) of the TOML key or value at an offset. `toml`'s errors carry only
//! a byte span; these name the line, column and key that an error message shows.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or("").chars().count() + 1;
    (line, column)
}

/// One step of a key path: a key, or an index into an array.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Best-effort key path (`vip[1] ("web").port`) of the innermost key or value
/// covering byte `target`. `toml`'s error carries no key path, so the text is
/// scanned again here; the scanner gives up (returning what it has) on
/// anything it does not understand and never panics.
pub(super) fn key_path_at(text: &str, target: usize) -> Option<String> {
    let mut finder = PathFinder {
        b: text.as_bytes(),
        // Skip a byte order mark.
        pos: if text.starts_with('\u{feff}') { 3 } else { 0 },
        target,
        best: None,
        tables: HashMap::new(),
        names: HashMap::new(),
    };
    // A scan that stops early still leaves whatever it found.
    let _ = finder.document();
    let (_, path) = finder.best.as_ref()?;
    if path.is_empty() {
        return None;
    }
    Some(finder.render(path))
}

struct PathFinder<'a> {
    b: &'a [u8],
    pos: usize,
    target: usize,
    /// Length of the narrowest range covering `target`, and its path.
    best: Option<(usize, Vec<Seg>)>,
    /// Number of elements of each `[[array.of.tables]]` seen so far.
    tables: HashMap<Vec<Seg>, usize>,
    /// `name = "..."` of array elements, keyed by the element's path.
    names: HashMap<Vec<Seg>, String>,
}

impl PathFinder<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn at(&self, s: &[u8]) -> bool {
        self.b
            .get(self.pos..)
            .is_some_and(|rest| rest.starts_with(s))
    }

    fn consider(&mut self, range: Range<usize>, path: &[Seg]) {
        if !range.contains(&self.target) {
            return;
        }
        let len = range.end - range.start;
        if self.best.as_ref().is_none_or(|(best, _)| len < *best) {
            self.best = Some((len, path.to_vec()));
        }
    }

    /// Spaces and tabs.
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Whitespace, newlines and comments.
    fn skip_trivia(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'#') => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.pos += 1)
    }

    fn document(&mut self) -> Option<()> {
        let mut table: Vec<Seg> = Vec::new();
        loop {
            self.skip_trivia();
            let start = self.pos;
            match self.peek() {
                None => return Some(()),
                Some(b'[') => {
                    let array = self.at(b"[[");
                    self.pos += if array { 2 } else { 1 };
                    let keys = self.keys()?;
                    self.skip_ws();
                    self.expect(b']')?;
                    if array {
                        self.expect(b']')?;
                    }
                    table = self.resolve(keys, array);
                    self.consider(start..self.pos, &table);
                }
                Some(_) => {
                    let mut path = table.clone();
                    path.extend(self.keys()?.into_iter().map(Seg::Key));
                    self.skip_ws();
                    self.expect(b'=')?;
                    self.skip_ws();
                    self.value(&path)?;
                    self.consider(start..self.pos, &path);
                }
            }
        }
    }

    /// Path of a table header; `[[x]]` headers append a new element to `x`.
    fn resolve(&mut self, keys: Vec<String>, array: bool) -> Vec<Seg> {
        let count = keys.len();
        let mut path = Vec::with_capacity(count * 2);
        for (i, key) in keys.into_iter().enumerate() {
            path.push(Seg::Key(key));
            if array && i + 1 == count {
                let n = self.tables.entry(path.clone()).or_insert(0);
                path.push(Seg::Index(*n));
                *n += 1;
            } else if let Some(n) = self.tables.get(&path) {
                path.push(Seg::Index(n.saturating_sub(1)));
            }
        }
        path
    }

    /// A dotted key such as `a."b c".d`.
    fn keys(&mut self) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        loop {
            self.skip_ws();
            let key = match self.peek()? {
                b'"' | b'\'' => self.string()?,
                _ => {
                    let start = self.pos;
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                    {
                        self.pos += 1;
                    }
                    if self.pos == start {
                        return None;
                    }
                    String::from_utf8_lossy(self.b.get(start..self.pos)?).into_owned()
                }
            };
            keys.push(key);
            self.skip_ws();
            if self.peek() == Some(b'.') {
                self.pos += 1;
            } else {
                return Some(keys);
            }
        }
    }

    /// Any of the four string forms; returns the raw (unescaped) content.
    fn string(&mut self) -> Option<String> {
        let q = self.peek()?;
        let triple = [q, q, q];
        let (start, end) = if self.at(&triple) {
            self.pos += 3;
            let start = self.pos;
            loop {
                let c = self.peek()?;
                if q == b'"' && c == b'\\' {
                    self.pos += 2;
                } else if self.at(&triple) {
                    // Up to two more quotes still belong to the content.
                    let mut end = self.pos;
                    while end - self.pos < 2 && self.b.get(end + 3) == Some(&q) {
                        end += 1;
                    }
                    self.pos = end + 3;
                    break (start, end);
                } else {
                    self.pos += 1;
                }
            }
        } else {
            self.pos += 1;
            let start = self.pos;
            loop {
                match self.peek()? {
                    b'\\' if q == b'"' => self.pos += 2,
                    b'\n' => return None,
                    c if c == q => {
                        self.pos += 1;
                        break (start, self.pos - 1);
                    }
                    _ => self.pos += 1,
                }
            }
        };
        Some(String::from_utf8_lossy(self.b.get(start..end)?).into_owned())
    }

    fn value(&mut self, path: &[Seg]) -> Option<()> {
        let start = self.pos;
        match self.peek()? {
            b'"' | b'\'' => {
                let s = self.string()?;
                if let [parent @ .., Seg::Index(_), Seg::Key(key)] = path {
                    if key == "name" {
                        let mut element = parent.to_vec();
                        element.push(path[path.len() - 2].clone());
                        self.names.insert(element, s);
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut i = 0;
                loop {
                    self.skip_trivia();
                    if self.peek()? == b']' {
                        self.pos += 1;
                        break;
                    }
                    let mut element = path.to_vec();
                    element.push(Seg::Index(i));
                    self.value(&element)?;
                    i += 1;
                    self.skip_trivia();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b']' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.pos += 1;
                loop {
                    self.skip_trivia();
                    if self.peek()? == b'}' {
                        self.pos += 1;
                        break;
                    }
                    let key_start = self.pos;
                    let mut inner = path.to_vec();
                    inner.extend(self.keys()?.into_iter().map(Seg::Key));
                    self.skip_ws();
                    self.expect(b'=')?;
                    self.skip_ws();
                    self.value(&inner)?;
                    self.consider(key_start..self.pos, &inner);
                    self.skip_trivia();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            _ => {
                // Number, boolean or date-time: up to the next delimiter.
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b']' | b'}' | b'#' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
                while self.pos > start && matches!(self.b.get(self.pos - 1), Some(b' ' | b'\t')) {
                    self.pos -= 1;
                }
                if self.pos == start {
                    return None;
                }
            }
        }
        self.consider(start..self.pos, path);
        Some(())
    }

    fn render(&self, path: &[Seg]) -> String {
        let mut out = String::new();
        for (i, seg) in path.iter().enumerate() {
            match seg {
                Seg::Key(key) => {
                    if i > 0 {
                        out.push('.');
                    }
                    let bare = !key.is_empty()
                        && key
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
                    if bare {
                        out.push_str(key);
                    } else {
                        let _ = write!(out, "{key:?}");
                    }
                }
                Seg::Index(n) => {
                    let _ = write!(out, "[{n}]");
                    if let Some(name) = path.get(..=i).and_then(|p| self.names.get(p)) {
                        let _ = write!(out, " ({name:?})");
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\r\nné = 1\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (2, 1));
        // 'é' is two bytes but one column; offset 7 is the space after it.
        assert_eq!(line_col(text, 7), (2, 3));
        // Inside a multi-byte character, and past the end: no panic.
        assert_eq!(line_col(text, 6), (2, 2));
        assert_eq!(line_col(text, 1000), (3, 1));
    }

    #[test]
    fn key_paths_of_offsets() {
        let text = r#"top = 1
"quoted key" = { a.b = [1, { c = 'x' }] }
[[pool]]
name = "p"
[[pool]]
name = 'q'
[[pool.backends]]
port = """multi
line"""
[x . "y z"]
w = 2024-01-01 10:00:00
"#;
        let at = |needle: &str| key_path_at(text, text.find(needle).unwrap());
        assert_eq!(at("top").as_deref(), Some("top"));
        assert_eq!(at("a.b").as_deref(), Some("\"quoted key\".a.b"));
        assert_eq!(at("1,").as_deref(), Some("\"quoted key\".a.b[0]"));
        assert_eq!(at("c =").as_deref(), Some("\"quoted key\".a.b[1].c"));
        assert_eq!(
            at("[[pool]]\nname = 'q'").as_deref(),
            Some("pool[1] (\"q\")")
        );
        assert_eq!(
            at("\"\"\"multi").as_deref(),
            Some("pool[1] (\"q\").backends[0].port")
        );
        assert_eq!(at("w =").as_deref(), Some("x.\"y z\".w"));
        assert_eq!(at("10:00").as_deref(), Some("x.\"y z\".w"));
        assert_eq!(key_path_at(text, 10_000), None);
        let bom = "\u{feff}[agent]\nx = 1\n";
        assert_eq!(
            key_path_at(bom, bom.find('x').unwrap()).as_deref(),
            Some("agent.x")
        );
    }
}
