//! A one-line progress bar for transfers in the REPL.

use std::io::Write as _;

use qpq_sdk::Progress;

/// Draws `[#####.....]  45%  1.2/2.6 MiB` on standard error, redrawn in place.
#[derive(Debug, Default)]
pub struct Bar {
    last_percent: Option<u64>,
}

impl Bar {
    /// A bar that has drawn nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Redraws the bar if the percentage changed; ends the line when done.
    pub fn update(&mut self, p: Progress) {
        let line = render(p, 30);
        let percent = percent(p);
        if self.last_percent == Some(percent) {
            return;
        }
        self.last_percent = Some(percent);
        let mut err = std::io::stderr();
        let _ = write!(err, "\r{line}");
        if p.done >= p.total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

fn percent(p: Progress) -> u64 {
    (p.done.min(p.total) * 100)
        .checked_div(p.total)
        .unwrap_or(100)
}

/// The bar's text, `width` cells wide.
pub fn render(p: Progress, width: usize) -> String {
    let pct = percent(p);
    let filled = usize::try_from(pct).unwrap_or(100) * width / 100;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "[{}{}] {pct:>3}%  {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(width - filled),
        mib(p.done),
        mib(p.total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_progress() {
        let p = |done, total| Progress { done, total };
        assert_eq!(render(p(0, 100), 10), "[..........]   0%  0.0/0.0 MiB");
        assert_eq!(render(p(45, 100), 10), "[####......]  45%  0.0/0.0 MiB");
        assert_eq!(render(p(3 << 20, 3 << 20), 4), "[####] 100%  3.0/3.0 MiB");
        assert_eq!(
            render(p(5, 0), 4),
            "[####] 100%  0.0/0.0 MiB",
            "an empty file is done"
        );
        assert_eq!(
            render(p(200, 100), 4),
            "[####] 100%  0.0/0.0 MiB",
            "never past full"
        );
    }
}
