//! Plain-text tables whose columns stay aligned whatever the lengths of their cells.

/// A table: a header row and data rows, printed with each column as wide as its widest cell
/// (counted in characters, so names with accents align too). The last column is not padded.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra ones dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        // Cells are one line each: a device string with a line break must not break the table.
        for c in &mut cells {
            if c.contains(['\n', '\r', '\t']) {
                *c = c.replace(['\n', '\r', '\t'], " ");
            }
        }
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let width = |c: &str| c.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(c));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                line.push_str(cell);
                if i < last {
                    line.extend(std::iter::repeat_n(' ', w - width(cell) + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_whatever_the_cell_lengths() {
        let mut t = Table::new(&["BUSID", "NAME", "STATE"]);
        t.row(vec!["1-1".into(), "Kéyboard".into(), "shared".into()]);
        t.row(vec![
            "3-10.4".into(),
            "A very long product name\nwith a break".into(),
            "attached".into(),
        ]);
        t.row(vec!["2-1".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        // Every STATE cell starts in the same column (in characters).
        let col = |l: &str, word: &str| l.find(word).map(|b| l[..b].chars().count());
        let state = col(lines[0], "STATE").unwrap();
        assert_eq!(col(lines[1], "shared"), Some(state));
        assert_eq!(col(lines[2], "attached"), Some(state));
        assert_eq!(col(lines[1], "Kéyboard"), col(lines[0], "NAME"));
        assert!(lines[2].contains("name with a break"), "{text}");
        assert_eq!(lines[3], "2-1", "blank cells leave no trailing spaces");
    }
}
