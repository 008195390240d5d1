//! One progress line, fitted to the terminal: a pure function from what the
//! ledger counted to text no wider than the screen, so it never wraps.
//!
//! Parts are dropped from the least useful up when the screen is narrow;
//! the bar and the file name take what width is left, and a long name is
//! shortened in its middle, where the least telling part of a path is.

use std::time::Duration;

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::events::Meter;

/// Everything one line shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The other side, on the receiver (one line per sender).
    pub peer: Option<String>,
    pub meter: Meter,
    /// Bytes per second over the last few seconds, once measurable.
    pub rate: Option<f64>,
    /// The file being moved, already terminal-safe.
    pub current: Option<String>,
    /// The session is over: the line is drawn a last time.
    pub finished: bool,
}

/// The widest a bar gets, brackets included; past that more bar says
/// nothing more.
const BAR_MAX: usize = 32;
const BAR_MIN: usize = 12;
/// Width the bar grows to before the file name gets more room.
const BAR_GOOD: usize = 22;
/// A name shorter than this is not worth showing.
const NAME_MIN: usize = 12;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Peer,
    Bar,
    Percent,
    Bytes,
    Files,
    /// Files without the word: `1,200/3,000`.
    Count,
    Rate,
    Eta,
    Name,
}

/// The line for `view` in at most `width` columns.
pub fn render(view: &View, width: usize) -> String {
    let m = &view.meter;
    // Numbers are right-aligned in the width they will have at the end
    // (or their widest form), so the parts do not shift as they change.
    let count = thousands(m.files_done);
    let count_width = thousands(m.files).len();
    let fixed = |part: Part| -> Option<String> {
        Some(match part {
            Part::Peer => view.peer.clone()?,
            Part::Percent => format!("{:>3}%", percent(m, view.finished)),
            Part::Bytes => {
                let widest = pair(m.bytes, m.bytes).len();
                format!("{:>widest$}", pair(m.bytes_done, m.bytes))
            }
            Part::Files => format!("{count:>count_width$}/{} files", thousands(m.files)),
            Part::Count => format!("{count:>count_width$}/{}", thousands(m.files)),
            Part::Rate => match view.rate {
                Some(rate) => format!("{:>8}/s", compact(rate as u64)),
                None => format!("{:>8}/s", "-"),
            },
            Part::Eta => format!("ETA {:>4}", eta(m, view.rate)),
            Part::Bar | Part::Name => return None,
        })
    };
    // Display order, and the order in which parts go when space is short
    // (the first to go is last here).
    let order: &[Part] = if view.peer.is_some() {
        &[
            Part::Peer,
            Part::Files,
            Part::Bytes,
            Part::Percent,
            Part::Rate,
            Part::Eta,
            Part::Bar,
            Part::Name,
        ]
    } else {
        &[
            Part::Percent,
            Part::Bar,
            Part::Bytes,
            Part::Files,
            Part::Rate,
            Part::Eta,
            Part::Name,
        ]
    };
    // Each step makes the line shorter: a part goes, or `Files` loses its
    // word (becomes `Count`). The sender keeps its bar longest; a receiver,
    // with a line per sender, keeps the rate and ETA of each.
    let drop_order = if view.peer.is_some() {
        [
            Part::Name,
            Part::Bar,
            Part::Percent,
            Part::Files,
            Part::Eta,
            Part::Rate,
            Part::Count,
            Part::Bytes,
            Part::Peer,
        ]
    } else {
        [
            Part::Name,
            Part::Files,
            Part::Rate,
            Part::Eta,
            Part::Bar,
            Part::Percent,
            Part::Count,
            Part::Bytes,
            Part::Peer,
        ]
    };
    let name = view.current.as_deref().filter(|n| !n.is_empty());
    let mut shown: Vec<Part> = order
        .iter()
        .copied()
        .filter(|p| *p != Part::Name || name.is_some())
        .filter(|p| *p != Part::Peer || view.peer.is_some())
        .collect();
    let min_width = |parts: &[Part]| -> usize {
        let gaps = 2 * parts.len().saturating_sub(1);
        gaps + parts
            .iter()
            .map(|p| match p {
                Part::Bar => BAR_MIN,
                Part::Name => NAME_MIN.min(name.map_or(0, UnicodeWidthStr::width)),
                other => fixed(*other).map_or(0, |t| t.width()),
            })
            .sum::<usize>()
    };
    for part in drop_order {
        if min_width(&shown) <= width {
            break;
        }
        if shown.len() <= 1 {
            break;
        }
        if part == Part::Files {
            for p in shown.iter_mut().filter(|p| **p == Part::Files) {
                *p = Part::Count;
            }
        } else {
            shown.retain(|p| *p != part);
        }
    }
    // What is left after the fixed parts goes to the bar, then the name.
    let mut spare = width.saturating_sub(min_width(&shown));
    let mut grow = |by: usize| {
        let taken = spare.min(by);
        spare -= taken;
        taken
    };
    let has_bar = shown.contains(&Part::Bar);
    let mut bar_width = if has_bar {
        BAR_MIN + grow(BAR_GOOD - BAR_MIN)
    } else {
        0
    };
    let name_width = match name {
        Some(n) if shown.contains(&Part::Name) => {
            let least = NAME_MIN.min(n.width());
            least + grow(n.width() - least)
        }
        _ => 0,
    };
    if has_bar {
        bar_width += grow(BAR_MAX - bar_width);
    }
    let texts: Vec<String> = shown
        .iter()
        .map(|part| match part {
            Part::Bar => bar(m, bar_width, view.finished),
            Part::Name => shorten(name.unwrap_or_default(), name_width),
            other => fixed(*other).unwrap_or_default(),
        })
        .collect();
    let line = texts.join("  ");
    // Only a screen narrower than the smallest part can still overflow.
    truncate(&line, width)
}

/// `112/292 MiB`, or `900 KiB/1.20 GiB` when the units differ.
fn pair(done: u64, total: u64) -> String {
    let (d, t) = (compact(done), compact(total));
    match (d.split_once(' '), t.split_once(' ')) {
        (Some((d_num, d_unit)), Some((_, t_unit))) if d_unit == t_unit => format!("{d_num}/{t}"),
        _ => format!("{d}/{t}"),
    }
}

/// A size in three significant digits: `1.20 GiB`, `32.0 MiB`, `292 MiB`.
pub fn compact(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1023.5 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let unit = UNITS[unit];
    if value < 9.995 {
        format!("{value:.2} {unit}")
    } else if value < 99.95 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// Whole percent done, 100 only when everything is in place (a session
/// of nothing but empty files is done only when it is over).
fn percent(m: &Meter, finished: bool) -> u64 {
    if m.bytes == 0 {
        return if finished && m.files_done >= m.files {
            100
        } else {
            0
        };
    }
    let p = (m.bytes_done.min(m.bytes) as u128 * 100 / m.bytes as u128) as u64;
    if p == 100 && m.bytes_done < m.bytes {
        99
    } else {
        p
    }
}

/// `[=====>    ]`, `width` columns including the brackets.
fn bar(m: &Meter, width: usize, finished: bool) -> String {
    let inner = width.saturating_sub(2);
    let filled = if m.bytes == 0 {
        if percent(m, finished) == 100 {
            inner
        } else {
            0
        }
    } else {
        (m.bytes_done.min(m.bytes) as u128 * inner as u128 / m.bytes as u128) as usize
    };
    let mut s = String::with_capacity(width);
    s.push('[');
    if filled == inner {
        s.extend(std::iter::repeat_n('=', inner));
    } else {
        s.extend(std::iter::repeat_n('=', filled));
        s.push('>');
        s.extend(std::iter::repeat_n(' ', inner - filled - 1));
    }
    s.push(']');
    s
}

/// Time left at `rate`: `0:07`, `12:34`, `1:02:03`, or `-` while unknown.
fn eta(m: &Meter, rate: Option<f64>) -> String {
    let left = m.bytes.saturating_sub(m.bytes_done);
    if m.files == 0 && m.bytes == 0 {
        return "-".into();
    }
    if left == 0 {
        return "0:00".into();
    }
    match rate {
        Some(rate) if rate >= 1.0 => clock(Duration::from_secs_f64(left as f64 / rate)),
        _ => "-".into(),
    }
}

/// `m:ss` under an hour, `h:mm:ss` above.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs().min(99 * 3600 + 3599);
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `text` in at most `width` columns, its middle replaced by `…` if needed.
pub fn shorten(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    // The end says which file; give it the larger half.
    let budget = width - 1;
    let tail_budget = budget - budget / 3;
    let head_budget = budget - tail_budget;
    let head = take_width(text.chars(), head_budget);
    let tail: String = {
        let reversed = take_width(text.chars().rev(), tail_budget);
        reversed.chars().rev().collect()
    };
    format!("{head}…{tail}")
}

/// `text` cut to at most `width` columns.
fn truncate(text: &str, width: usize) -> String {
    if text.width() <= width {
        text.to_owned()
    } else {
        take_width(text.chars(), width)
    }
}

fn take_width(chars: impl Iterator<Item = char>, width: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in chars {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(done: u64, total: u64) -> View {
        View {
            peer: None,
            meter: Meter {
                files: 3000,
                files_done: 1200,
                bytes: total,
                bytes_done: done,
                moved: done,
            },
            rate: Some(10.0 * 1024.0 * 1024.0),
            current: Some("photos/2024/summer/very-long-directory-name/IMG_0042.jpg".into()),
            finished: false,
        }
    }

    #[test]
    fn a_wide_screen_shows_everything() {
        let line = render(&view(1 << 30, 2 << 30), 200);
        let bar = format!("[{}>{}]", "=".repeat(15), " ".repeat(14));
        assert!(
            line.starts_with(&format!(
                " 50%  {bar}  1.00/2.00 GiB  1,200/3,000 files  10.0 MiB/s  ETA 1:42  "
            )),
            "{line}"
        );
        assert!(
            line.ends_with("photos/2024/summer/very-long-directory-name/IMG_0042.jpg"),
            "{line}"
        );
    }

    #[test]
    fn no_line_is_wider_than_its_screen() {
        for width in 0..160 {
            for v in [view(0, 0), view(1 << 30, 2 << 30), {
                let mut v = view(5, 10);
                v.peer = Some("[fe80::1234:5678:9abc:def0]:50122".into());
                v.current = Some("名前がとても長いファイル名前がとても長いファイル.txt".into());
                v
            }] {
                let line = render(&v, width);
                assert!(line.width() <= width, "{width}: {line:?}");
            }
        }
    }

    #[test]
    fn at_sixty_columns_the_bar_counts_and_a_shortened_name_remain() {
        let line = render(&view(1 << 30, 2 << 30), 59);
        assert!(line.width() <= 59);
        assert!(line.starts_with(" 50%  [====="), "{line}");
        assert!(
            line.contains("1.00/2.00 GiB  1,200/3,000  ETA 1:42"),
            "{line}"
        );
        let line = render(&view(1 << 30, 2 << 30), 120);
        assert!(line.contains('['), "{line}");
        assert!(
            line.contains('…') && line.ends_with("IMG_0042.jpg"),
            "{line}"
        );
    }

    #[test]
    fn the_receiver_line_leads_with_the_peer() {
        let mut v = view(3, 4);
        v.peer = Some("10.0.0.2:50122".into());
        let line = render(&v, 120);
        assert!(
            line.starts_with(
                "10.0.0.2:50122  1,200/3,000 files  3/4 B   75%  10.0 MiB/s  ETA 0:00  [="
            ),
            "{line}"
        );
    }

    #[test]
    fn sizes_keep_three_digits() {
        assert_eq!(compact(0), "0 B");
        assert_eq!(compact(1023), "1023 B");
        assert_eq!(compact(1024), "1.00 KiB");
        assert_eq!(compact(32 << 20), "32.0 MiB");
        assert_eq!(compact(292 << 20), "292 MiB");
        assert_eq!(compact(1023 << 20), "1023 MiB");
        assert_eq!(compact((1 << 30) + (1 << 29)), "1.50 GiB");
        assert_eq!(pair(112 << 20, 292 << 20), "112/292 MiB");
        assert_eq!(pair(900 << 10, 1288 << 20), "900 KiB/1.26 GiB");
    }

    #[test]
    fn percent_is_100_only_when_all_is_in_place() {
        let m = |done, total| Meter {
            bytes: total,
            bytes_done: done,
            ..Meter::default()
        };
        assert_eq!(percent(&m(999_999, 1_000_000), false), 99);
        assert_eq!(percent(&m(1_000_000, 1_000_000), false), 100);
        assert_eq!(percent(&m(0, 0), false), 0, "nothing offered yet");
        assert_eq!(percent(&m(0, 0), true), 100);
        assert_eq!(bar(&m(1, 1), 6, false), "[====]");
        assert_eq!(bar(&m(1, 2), 6, false), "[==> ]");
        assert_eq!(bar(&m(0, 2), 6, false), "[>   ]");
    }

    #[test]
    fn names_are_shortened_in_the_middle_by_columns() {
        assert_eq!(shorten("abcdefghij", 10), "abcdefghij");
        assert_eq!(shorten("abcdefghijkl", 10), "abc…ghijkl");
        let wide = shorten("日本語のファイル名.txt", 9);
        assert!(wide.width() <= 9 && wide.contains('…'), "{wide}");
    }

    #[test]
    fn small_helpers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(clock(Duration::from_secs(7)), "0:07");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
        let m = Meter {
            bytes: 100,
            bytes_done: 50,
            ..Meter::default()
        };
        assert_eq!(eta(&m, Some(10.0)), "0:05");
        assert_eq!(eta(&m, None), "-");
    }
}
