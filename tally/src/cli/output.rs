//! How commands print: one JSON object or text for people on stdout, tables, one-line errors.

use std::io::Write;

use serde::Serialize;

use super::Failure;

/// Serializes a `u128` as a decimal string: JSON readers commonly hold numbers in doubles, which
/// lose precision beyond 2^53.
pub(super) fn decimal<S: serde::Serializer>(
    value: &u128,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Prints `output` as one line of JSON, or `text` for people.
pub(super) fn print_output(json: bool, output: &impl Serialize, text: &str) -> Result<(), Failure> {
    let line = if json {
        serde_json::to_string(output)
            .map_err(|error| Failure::error(format!("cannot encode the answer as JSON: {error}")))?
    } else {
        text.to_string()
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`tally history 7 | head -1`): nothing left to tell it.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(Failure::error(format!("cannot write to stdout: {error}"))),
    }
}

/// Columns padded to their widest cell: columns of numbers (every cell digits, or `-` for none)
/// right-aligned, the others left-aligned.
pub(super) fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let column_count = headers.len();
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    let mut numeric = vec![true; column_count];
    for row in rows {
        debug_assert_eq!(
            row.len(),
            column_count,
            "a table row has one cell per column"
        );
        for (column, cell) in row.iter().enumerate().take(column_count) {
            widths[column] = widths[column].max(cell.chars().count());
            let is_number = cell == "-" || cell.chars().all(|digit| digit.is_ascii_digit());
            numeric[column] &= is_number;
        }
    }
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    std::iter::once(&header_row)
        .chain(rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .take(column_count)
                .map(|(column, cell)| {
                    let width = widths[column];
                    if numeric[column] {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON name for people: `insufficient_funds` → `insufficient funds`.
pub(super) fn human(name: &str) -> String {
    name.replace('_', " ")
}

/// `text` on one line, so that every error is exactly one line of stderr.
pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["1".to_string(), "5".to_string()],
            vec!["total".to_string(), "12345".to_string()],
        ];
        assert_eq!(
            render_table(&["account", "balance"], &rows),
            "account  balance\n1              5\ntotal      12345"
        );
        let rows = vec![
            vec!["1".to_string(), "up".to_string(), "7".to_string()],
            vec!["22".to_string(), "down".to_string(), "-".to_string()],
        ];
        assert_eq!(
            render_table(&["node", "state", "lsn"], &rows),
            "node  state  lsn\n   1  up       7\n  22  down     -"
        );
    }

    #[test]
    fn errors_fit_on_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
